"""DiagonalNormalMixture against torch's broadcast MixtureSameFamily: values, gradients, shapes, samples."""

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyroib.mixture import DiagonalNormalMixture


def components(k=7, d=3, dtype=torch.float64, narrow=False, seed=0):
    g = torch.Generator().manual_seed(seed)
    loc = (3 * torch.randn(k, d, generator=g, dtype=dtype)).requires_grad_()
    low = 1e-3 if narrow else 0.2
    scale = (low + torch.rand(k, d, generator=g, dtype=dtype)).requires_grad_()
    logits = torch.randn(k, generator=g, dtype=dtype).requires_grad_()
    return loc, scale, logits


def reference(loc, scale, logits, batch_shape):
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(loc, scale).to_event(1))
    return mixture.expand(batch_shape)


@pytest.mark.parametrize("narrow", [False, True])
def test_log_density_and_its_gradients_equal_the_broadcast_mixture(narrow):
    loc, scale, logits = components(narrow=narrow)
    # points on, near and far from the components: the expansion cancels worst on top of a narrow one
    z = torch.cat(
        [loc.detach()[:4] + 1e-3 * torch.randn(4, 3, dtype=torch.float64), torch.randn(6, 3, dtype=torch.float64) * 5]
    ).requires_grad_()
    ours = DiagonalNormalMixture(loc, scale, logits, batch_shape=(10,)).log_prob(z)
    theirs = reference(loc, scale, logits, (10,)).log_prob(z)
    assert ours.shape == theirs.shape == (10,)
    assert torch.allclose(ours, theirs, rtol=1e-10, atol=1e-8)
    for mine, exact in zip(
        torch.autograd.grad(ours.sum(), (loc, scale, logits, z)),
        torch.autograd.grad(theirs.sum(), (loc, scale, logits, z)),
    ):
        assert torch.allclose(mine, exact, rtol=1e-7, atol=1e-7)


def test_float32_input_keeps_float64_accuracy_where_the_expansion_cancels():
    loc, scale, logits = (t.detach().float() for t in components(k=50, d=40, narrow=True))
    z = loc[:20] + scale[:20] * torch.randn(20, 40)
    ours = DiagonalNormalMixture(loc, scale, logits, batch_shape=(20,)).log_prob(z)
    exact = reference(loc.double(), scale.double(), logits.double(), (20,)).log_prob(z.double())
    assert ours.dtype == torch.float32
    assert torch.allclose(ours.double(), exact, rtol=1e-6, atol=1e-3)  # float32 rounding of the result only


def test_shapes_expand_and_broadcast_as_a_torch_distribution():
    loc, scale, logits = (t.detach() for t in components())
    mixture = DiagonalNormalMixture(loc, scale, logits, batch_shape=(4,))
    assert (mixture.batch_shape, mixture.event_shape) == ((4,), (3,))
    wide = mixture.expand((5, 4))
    assert wide.batch_shape == (5, 4) and wide.loc is loc  # components shared, never copied per element
    assert wide.log_prob(torch.zeros(5, 4, 3)).shape == (5, 4)
    assert wide.log_prob(torch.zeros(3)).shape == (5, 4)  # a single point broadcasts to the batch
    assert wide.sample((2,)).shape == (2, 5, 4, 3)
    with pytest.raises(ValueError, match=r"loc and scale must both be \(components, latent_dim\)"):
        DiagonalNormalMixture(loc[0], scale[0])
    with pytest.raises(ValueError, match="logits must be"):
        DiagonalNormalMixture(loc, scale, logits[:2])


def test_samples_match_the_mixture_moments():
    loc, scale, logits = (t.detach() for t in components(k=4, d=2))
    mixture = DiagonalNormalMixture(loc, scale, logits)
    exact = reference(loc, scale, logits, ())
    assert torch.allclose(mixture.mean, exact.mean) and torch.allclose(mixture.variance, exact.variance)
    torch.manual_seed(1)
    draws = mixture.sample((200_000,))
    assert torch.allclose(draws.mean(0), exact.mean, atol=4 * (exact.variance / 200_000).sqrt().max())
    assert torch.allclose(draws.var(0), exact.variance, rtol=0.02)


def test_a_pyro_plate_expands_it_and_scores_each_point():
    loc, scale, logits = (t.detach() for t in components())
    z = torch.randn(6, 3, dtype=torch.float64)

    def model():
        with pyro.plate("points", 6):
            pyro.sample("z", DiagonalNormalMixture(loc, scale, logits), obs=z)

    with pyro.validation_enabled():
        trace = poutine.trace(model).get_trace()
    assert torch.allclose(trace.log_prob_sum(), reference(loc, scale, logits, (6,)).log_prob(z).sum())
