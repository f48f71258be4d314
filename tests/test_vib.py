"""Deep VIB: its loss is cross-entropy + β·rate, its bounds match closed forms, and it learns digits."""

import json
import math

import pytest
import torch
from pyro import poutine
from torch.distributions import Normal
from torch.nn import functional as F

from pyroib.architectures import resolve
from pyroib.cli import main
from pyroib.handlers import bottleneck
from pyroib.models.vib import Config, label_entropy
from pyroib.objectives import InfoELBO

DIGITS = {"data_shape": (1, 8, 8), "n_classes": 10}


def _pair(**config):
    program = resolve("vib")
    cfg = Config(**{**DIGITS, "latent_dim": 3, "hidden": (16,), **config})
    return program.Model(cfg), program.Guide(cfg), cfg


def test_config_refuses_a_single_class_and_bad_sizes():
    with pytest.raises(ValueError, match="n_classes"):
        Config(n_classes=1)
    with pytest.raises(ValueError, match="latent_dim"):
        Config(latent_dim=0)
    with pytest.raises(ValueError, match="classifier_hidden"):
        Config(classifier_hidden=(0,))


@pytest.mark.parametrize("beta", [1.0, 0.01])
def test_loss_is_cross_entropy_plus_beta_rate_by_hand(beta):
    """loss = N/B Σ_n [-log p(y_n | z_n) + β (log q(z_n | x_n) - log N(z_n; 0, I))], same z, value and gradient."""
    model, guide, cfg = _pair(classifier_hidden=(8,))
    model, guide = model.double(), guide.double()  # float64: the comparison is of algebra, not of roundoff
    x, y = torch.rand(6, *cfg.data_shape, dtype=torch.float64), torch.tensor([0, 1, 2, 3, 4, 9])
    index, size = torch.tensor([3, 7, 11, 20, 21, 40]), 50
    guide_trace = poutine.trace(guide).get_trace(x, y, index=index, size=size)
    m, g = bottleneck(poutine.replay(model, trace=guide_trace), poutine.replay(guide, trace=guide_trace), beta)
    terms = InfoELBO().terms(m, g, x, y, index=index, size=size)

    z = guide_trace.nodes["z"]["value"]
    loc, scale = guide.encode(x)
    rate = (Normal(loc, scale).log_prob(z) - Normal(0.0, 1.0).log_prob(z)).sum(-1)
    cross_entropy = F.cross_entropy(model.classifier(z), y, reduction="none")
    by_hand = size / x.shape[0] * (cross_entropy + beta * rate).sum()

    assert torch.allclose(terms.loss, by_hand.detach(), rtol=1e-5)
    assert torch.allclose(terms.values["distortion"], cross_entropy.mean().detach(), rtol=1e-5)
    assert torch.allclose(terms.values["rate"], rate.mean().detach(), rtol=1e-5)
    params = [*model.parameters(), *guide.parameters()]
    grads = torch.autograd.grad(terms.surrogate, params, retain_graph=True)
    expected = torch.autograd.grad(by_hand, params)
    for got, want in zip(grads, expected):
        assert torch.allclose(got, want, rtol=1e-9, atol=1e-9)


def test_metrics_match_closed_forms():
    """A classifier blind to z with logits log p̂(y) has cross-entropy H(Y), so the I(Z;Y) bound reads exactly 0;
    the I(X;Z) bound is the Gaussian KL ½ Σ (σ² + μ² - 1 - log σ²) averaged over x."""
    model, guide, cfg = _pair()
    x = torch.rand(40, *cfg.data_shape)
    y = torch.tensor([0] * 20 + [1] * 10 + [2] * 5 + [3] * 5)
    frequencies = torch.tensor([20, 10, 5, 5] + [0] * 6, dtype=torch.float32) / 40
    with torch.no_grad():
        linear = model.classifier[-1]
        linear.weight.zero_()
        linear.bias.copy_(frequencies.clamp_min(1e-12).log())
    result = model.metrics(guide, x, y, samples=5, batch_size=16)

    h_y = -(frequencies[:4] * frequencies[:4].log()).sum()
    assert result["h_y"] == pytest.approx(float(h_y), rel=1e-6)
    assert result["cross_entropy"] == pytest.approx(float(h_y), rel=1e-5)
    assert result["predictive_nll"] == pytest.approx(float(h_y), rel=1e-5)
    assert result["i_zy_lower"] == pytest.approx(0.0, abs=1e-5)
    assert result["accuracy"] == pytest.approx(0.5)  # the majority class, 20 of 40
    with torch.no_grad():
        loc, scale = guide.encode(x)
    kl = 0.5 * (scale**2 + loc**2 - 1 - 2 * scale.log()).sum(-1).mean()
    assert result["i_xz_upper"] == pytest.approx(float(kl), rel=1e-5)


def test_label_entropy_of_uniform_labels_is_log_k():
    assert label_entropy(torch.arange(10).repeat(3), 10) == pytest.approx(math.log(10))


def test_metrics_need_labels():
    model, guide, cfg = _pair()
    with pytest.raises(ValueError, match="labels"):
        model.metrics(guide, torch.rand(4, *cfg.data_shape), None)


def test_vib_learns_digits_and_its_bounds_are_ordered(tmp_path, capsys):
    """Five epochs on grey-level digits through the CLI, then ``pyroib evaluate --json``.

    Measured on this setting (hidden 256, K = 16, lr 0.01): test accuracy 0.958-0.964 over seeds 0-2; the
    threshold leaves margin.
    Bounds: i_zy_lower <= I(Z;Y) <= I(X;Z) <= i_xz_upper (Y - X - Z is a Markov chain) and I(Z;Y) <= H(Y).
    """
    run = tmp_path / "vib"
    assert (
        main(
            [
                "train",
                "--model",
                "vib",
                "--dataset",
                "digits",
                "--binarize",
                "none",
                "--epochs",
                "5",
                "--lr",
                "0.01",
                "--hidden",
                "256",
                "--latent-dim",
                "16",
                "--beta",
                "0.01",
                "--seed",
                "0",
                "--device",
                "cpu",
                "--no-progress",
                "--out",
                str(run),
            ]
        )
        == 0
    )
    capsys.readouterr()
    assert main(["evaluate", str(run), "--split", "test", "--iw-samples", "20", "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["accuracy"] >= 0.92
    assert 0.0 <= result["i_zy_lower"] <= result["h_y"] <= math.log(10) + 1e-9
    assert result["i_zy_lower"] <= result["i_xz_upper"]
    assert result["i_xz_upper"] == pytest.approx(result["rate"], rel=1e-4)
    assert result["predictive_nll"] <= result["cross_entropy"] + 1e-6
    assert "nll_iw" not in result  # -log p(x) is meaningless for a model that does not observe x
