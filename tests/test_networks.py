import math

import pytest
import torch

from pyroib.likelihoods import LIKELIHOODS, make_likelihood
from pyroib.networks import Decoder, GatedLinear, GaussianEncoder


@pytest.mark.parametrize("network, hidden", [("mlp", (16,)), ("mlp", (16, 8)), ("gated", (16, 8)), ("conv", (8, 16))])
@pytest.mark.parametrize("shape", [(1, 8, 8), (1, 28, 28), (3, 16, 16)])
def test_encoder_decoder_shapes(network, hidden, shape):
    if network == "conv" and shape[1] % 4:
        pytest.skip("conv needs H divisible by 4")
    enc, dec = GaussianEncoder(shape, hidden, 5, network), Decoder(5, hidden, shape, network, out_factor=2)
    loc, scale = enc(torch.rand(7, *shape))
    assert loc.shape == scale.shape == (7, 5) and (scale > 0).all()
    assert dec(torch.randn(3, 7, 5)).shape == (3, 7, 2 * shape[0], *shape[1:])


def test_gated_network_gates_every_hidden_layer_and_not_the_output():
    torch.manual_seed(0)
    layer = GatedLinear(3, 2)
    x = torch.randn(4, 3)
    w, b = layer.linear.weight, layer.linear.bias
    expected = (x @ w[:2].T + b[:2]) * torch.sigmoid(x @ w[2:].T + b[2:])
    assert torch.allclose(layer(x), expected)
    dec = Decoder(5, (16, 8), (1, 4, 4), "gated")
    kinds = [type(m).__name__ for m in dec.body]
    assert kinds == ["GatedLinear", "GatedLinear", "Linear"]  # unconstrained logits out
    enc = GaussianEncoder((1, 4, 4), (16, 8), 5, "gated")
    assert sum(isinstance(m, GatedLinear) for m in enc.modules()) == 2


def test_conv_refuses_sizes_it_cannot_halve():
    with pytest.raises(ValueError, match="divisible by 8"):
        GaussianEncoder((1, 28, 28), (8, 8, 8), 4, "conv")
    with pytest.raises(ValueError, match="unknown network"):
        Decoder(4, (8,), (1, 8, 8), "resnet")


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_likelihoods_are_normalised_per_pixel(name):
    """Each likelihood integrates (sums) to one over a single pixel's support, at arbitrary parameters."""
    lik = make_likelihood(name, (1, 1, 1))
    params = torch.tensor([[[[0.7]]]])
    d = lik(params)
    if name == "bernoulli":
        total = sum(d.log_prob(torch.full((1, 1, 1, 1), v)).exp() for v in (0.0, 1.0))
    elif name == "discretised-gaussian":  # a probability mass over the 256 grey levels
        total = d.log_prob((torch.arange(256) / 255).reshape(-1, 1, 1, 1)).exp().sum()
    else:
        lo, hi = (0.0, 1.0) if name == "continuous-bernoulli" else (-10.0, 10.0)
        grid = torch.linspace(lo, hi, 200_001)
        values = d.log_prob(grid.reshape(-1, 1, 1, 1)).exp()
        total = torch.trapezoid(values, grid)
    assert float(total.detach()) == pytest.approx(1.0, abs=1e-3)


def test_gaussian_likelihood_matches_the_closed_form():
    lik = make_likelihood("gaussian", (1, 2, 2))
    mean = torch.zeros(1, 1, 2, 2)
    x = torch.full((1, 1, 2, 2), 0.2)
    sigma = math.exp(-2.3)
    expected = 4 * (-0.5 * math.log(2 * math.pi * sigma**2) - 0.2**2 / (2 * sigma**2))
    assert float(lik(mean).log_prob(x).detach()) == pytest.approx(expected, rel=1e-4)


def test_bernoulli_on_grey_levels_is_an_error_with_a_hint():
    lik = make_likelihood("bernoulli", (1, 2, 2))
    with pytest.raises(ValueError, match="--binarize"):
        lik.check_data(torch.full((3, 1, 2, 2), 0.5), "none")
    lik.check_data(torch.full((3, 1, 2, 2), 0.5), "dynamic")  # resampled to {0, 1} every pass: fine
    with pytest.raises(ValueError, match="unknown likelihood"):
        make_likelihood("poisson", (1, 2, 2))


def test_burgess_networks_have_the_published_layout():
    from pyroib.networks import Decoder, GaussianEncoder

    encoder = GaussianEncoder((1, 64, 64), (400,), 10, "burgess")
    decoder = Decoder(10, (400,), (1, 64, 64), "burgess")
    convs = [m for m in encoder.body if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 32, 64, 64] and all(c.stride == (2, 2) for c in convs)
    x = torch.rand(5, 1, 64, 64)
    loc, scale = encoder(x)
    assert loc.shape == (5, 10) and bool((scale > 0).all()) and decoder(loc).shape == (5, 1, 64, 64)
    with pytest.raises(ValueError, match="reads 64 x 64 images"):
        GaussianEncoder((1, 28, 28), (400,), 10, "burgess")
