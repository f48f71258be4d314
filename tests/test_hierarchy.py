"""The hierarchical VAE and the Gaussian-mixture VAE: enumerated top layers equal to TraceEnum_ELBO, stacks of any
layer types from flags, per-layer β, per-layer information and clustering scores in ``evaluate --json``, and the
clustering scores themselves against brute force."""

import itertools
import json
import math

import numpy as np
import pytest
import torch
from pyro.infer import TraceEnum_ELBO

from pyroib.checkpoint import read_jsonl
from pyroib.cli import main
from pyroib.clustering import clustering_scores, hungarian_accuracy
from pyroib.models.hvae import Config, Model
from pyroib.objectives import InfoELBO

TINY = ["--dataset", "digits", "--epochs", "1", "--device", "cpu", "--no-progress", "--batch-size", "64"]
SMALL = ["--hidden", "32", "--layer-hidden", "16"]


def _brute_force_accuracy(labels, clusters):
    """The best accuracy over every one-to-one map of cluster values onto label values."""
    label_values, cluster_values = sorted(set(labels)), sorted(set(clusters))
    best = 0
    for image in itertools.permutations(label_values + [None] * len(cluster_values), len(cluster_values)):
        mapping = dict(zip(cluster_values, image))
        best = max(best, sum(mapping[c] == y for c, y in zip(clusters, labels)))
    return best / len(labels)


def test_hungarian_accuracy_is_the_best_one_to_one_map():
    rng = np.random.default_rng(0)
    for clusters_count in (3, 4, 5):
        labels = rng.integers(0, 4, 40).tolist()
        noisy = [int(rng.integers(clusters_count)) for _ in labels]
        clusters = [(y + 1) % clusters_count if rng.random() < 0.7 else n for y, n in zip(labels, noisy)]
        assert hungarian_accuracy(labels, clusters) == pytest.approx(_brute_force_accuracy(labels, clusters))


def test_renamed_clusters_score_perfectly_and_a_single_cluster_scores_chance():
    labels = torch.arange(10).repeat(20)
    renamed = (labels * 7 + 3) % 10
    assert clustering_scores(labels, renamed) == pytest.approx({"cluster_accuracy": 1.0, "nmi": 1.0, "ari": 1.0})
    one = clustering_scores(labels, torch.zeros_like(labels))
    assert one["cluster_accuracy"] == pytest.approx(0.1) and one["nmi"] == pytest.approx(0.0)
    assert one["ari"] == pytest.approx(0.0)


@pytest.mark.parametrize(
    "sizes, kinds",
    [((6, 3), ("gaussian", "categorical")), ((6, 4, 3), ("gaussian", "gaussian", "categorical"))],
)
def test_hierarchy_objective_is_trace_enum_elbo_at_beta_one(sizes, kinds):
    from pyroib.guides.hvae import Guide

    torch.manual_seed(0)
    config = Config(data_shape=(1, 4, 4), layer_sizes=sizes, layer_types=kinds, hidden=(8,), layer_hidden=(5,))
    model, guide = Model(config), Guide(config)
    x = torch.rand(7, 1, 4, 4)
    objective = InfoELBO()
    objective.terms(model, guide, x)
    torch.manual_seed(1)
    ours = objective.terms(model, guide, x)
    torch.manual_seed(1)
    theirs = TraceEnum_ELBO(max_plate_nesting=1).differentiable_loss(model, guide, x)
    assert float(ours.loss) == pytest.approx(float(theirs.detach()), rel=1e-5)
    params = [*model.parameters(), *guide.parameters()]
    for a, b in zip(torch.autograd.grad(ours.surrogate, params), torch.autograd.grad(theirs, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    assert set(ours.values) >= {f"rate/z{i + 1}" for i in range(len(sizes))}


def test_layer_flags_are_checked_in_one_line(capsys, tmp_path):
    for flags, message in [
        (["--layer-sizes", "8,4", "--layer-types", "gaussian"], "one type per layer"),
        (["--layer-types", "categorical,gaussian"], "the first layer (next to x) must be gaussian"),
        (["--layer-types", "gaussian,binary"], "unknown layer type 'binary'"),
        (
            ["--layer-sizes", "8,4,3", "--layer-types", "gaussian,categorical,gaussian"],
            "layer z2 is categorical under the gaussian layer z3",
        ),
        (["--layer-sizes", "4,10", "--anchors", "1,1,2,2"], "latent site 'z2' (Categorical) has no latent dimensions"),
    ]:
        assert main(["train", "--model", "hvae", *TINY, *flags, "--out", str(tmp_path / "run")]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1
        assert not (tmp_path / "run").exists()


def test_three_layer_hvae_trains_with_per_layer_beta_and_reports_each_layer(capsys, tmp_path):
    run = tmp_path / "run"
    flags = ["--layer-sizes", "8,4,5", "--layer-types", "gaussian,gaussian,categorical", "--beta", "z1=1,z2=2,z3=0.5"]
    assert main(["train", "--model", "hvae", *TINY, *SMALL, *flags, "--out", str(run)]) == 0, capsys.readouterr().err
    row = read_jsonl(run / "metrics.jsonl")[-1]
    assert (row["beta/z1"], row["beta/z2"], row["beta/z3"]) == (1.0, 2.0, 0.5)
    # the logged loss is the β-weighted sum of the logged terms
    weighted = row["train_distortion"] + row["train_rate/z1"] + 2 * row["train_rate/z2"] + 0.5 * row["train_rate/z3"]
    assert row["train_loss"] == pytest.approx(weighted, rel=1e-4)
    capsys.readouterr()
    argv = ["evaluate", str(run), "--json", "--device", "cpu", "--iw-samples", "5", "--full-data-points", "200"]
    assert main(argv) == 0
    result = json.loads(capsys.readouterr().out)
    assert {"rate/z1", "rate/z2", "rate/z3", "layer_tc/z1", "layer_tc/z2", "layer_mi/z3"} <= set(result)
    assert result["cluster_site"] == "z3" and 0 <= result["cluster_accuracy"] <= 1
    assert len(set(result["top_dims/z1"])) == 2 and set(result["top_dims/z1"]) <= set(range(8))
    assert math.isfinite(result["nll_iw"])


@pytest.mark.parametrize("summed_in", ["guide", "model"])
def test_gaussian_mixture_vae_in_both_placements(capsys, tmp_path, summed_in):
    run = tmp_path / summed_in
    argv = ["train", "--model", "gmvae", *TINY, "--hidden", "32", "--summed-in", summed_in, "--out", str(run)]
    assert main(argv) == 0, capsys.readouterr().err
    row = read_jsonl(run / "metrics.jsonl")[-1]
    # the cluster has a rate of its own only where the guide infers it; the loss is the sum of the logged terms
    assert ("train_rate/z2" in row) == (summed_in == "guide")
    assert row["train_loss"] == pytest.approx(row["train_distortion"] + row["train_rate"], rel=1e-5)
    assert row["train_rate"] == pytest.approx(row["train_rate/z1"] + row.get("train_rate/z2", 0.0), rel=1e-5)
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", "--device", "cpu", "--iw-samples", "5"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["cluster_site"] == "z2" and {"nmi", "ari", "clusters_used"} <= set(result)
    assert ("moment-matched" in result.get("full_data_note", "")) == (summed_in == "guide")


def test_a_weight_on_a_site_summed_out_in_the_model_is_refused(capsys, tmp_path):
    argv = ["train", "--model", "gmvae", *TINY, "--summed-in", "model", "--beta", "z2=2", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "'z2'" in err and "summed out in the model" in err and not (tmp_path / "r").exists()


def test_anchors_on_a_prior_marginalised_over_the_cluster_are_refused():
    from pyroib.guides.gmvae import Guide
    from pyroib.handlers import bottleneck
    from pyroib.models.gmvae import Config as MixtureConfig

    config = MixtureConfig(data_shape=(1, 4, 4), layer_sizes=(3, 4), hidden=(8,), summed_in="model")
    model, guide = bottleneck(Model(config), Guide(config), anchors={"z1": torch.ones(3)})
    with pytest.raises(ValueError, match="anchor weights on latent site 'z1'"):
        InfoELBO().terms(model, guide, torch.rand(5, 1, 4, 4))


@pytest.mark.parametrize(
    "device", ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA"))]
)
def test_report_has_the_top_layer_traversals_and_per_layer_terms(capsys, tmp_path, device):
    run = tmp_path / "run"
    assert main(["train", "--model", "hvae", *TINY, *SMALL, "--layer-sizes", "6,3", "--out", str(run)]) == 0
    assert main(["report", str(run), "--device", device, "--iw-samples", "2"]) == 0, capsys.readouterr().err
    report = (run / "report" / "report.md").read_text()
    for figure in ("layer_traversals.png", "layer_information.png", "kl_per_dim.png"):
        assert (run / "report" / figure).stat().st_size > 0 and f"({figure})" in report
    assert "| cluster_accuracy |" in report and "| layer_mi/z2 |" in report
    assert "the prior the program writes, 6 latent dimensions," in report  # z1's; z2 has no per-dimension KL
    evaluation = json.loads((run / "report" / "evaluation.json").read_text())
    first, second = evaluation["top_dims/z1"]
    assert f"Most informative dimensions of z1, by I(x; z1_i): {first} (" in report and f", {second} (" in report


def test_anchor_weights_on_a_code_drawn_per_cluster_value_are_the_hand_written_sum():
    """Anchors on z1 of the Gaussian-mixture VAE, whose q(z1 | x, z2) is drawn once per enumerated cluster value:
    the loss moves by Σ_k q(k | x) Σ_j (w_j − 1) KL_j(q(z1_j | x, k) ‖ p(z1_j | k)); the reported rate does not move."""
    from pyro.distributions import Normal
    from torch.distributions import kl_divergence

    from pyroib.guides.gmvae import Guide
    from pyroib.handlers import bottleneck
    from pyroib.models.gmvae import Config as MixtureConfig

    torch.manual_seed(0)
    config = MixtureConfig(data_shape=(1, 4, 4), layer_sizes=(3, 4), hidden=(8,))
    model, guide = Model(config), Guide(config)
    x = torch.rand(6, 1, 4, 4)
    weights = torch.tensor([0.5, 2.0, 3.0])
    objective = InfoELBO(analytic_kl=True)
    objective.terms(model, guide, x)
    torch.manual_seed(1)
    plain = objective.terms(model, guide, x)
    torch.manual_seed(1)
    anchored = objective.terms(*bottleneck(model, guide, anchors={"z1": weights}), x)
    expected = 0.0
    with torch.no_grad():
        features = guide.features(x)
        cluster = guide.classifier(features).softmax(-1)
        for k in range(4):
            onehot = torch.nn.functional.one_hot(torch.full((6,), k), 4).float()
            loc, raw = guide.given_cluster(torch.cat([features, onehot], -1)).chunk(2, -1)
            q_z1 = Normal(loc, torch.nn.functional.softplus(raw) + 1e-4)
            p_z1 = model.conditional(1, torch.tensor([k])).base_dist
            expected += float((cluster[:, k : k + 1] * (weights - 1) * kl_divergence(q_z1, p_z1)).sum())
    assert float(anchored.loss - plain.loss) == pytest.approx(expected, rel=1e-4)
    assert float(anchored.values["rate/z1"]) == pytest.approx(float(plain.values["rate/z1"]), rel=1e-6)


def test_anchors_on_the_layer_under_an_enumerated_top_move_the_loss_but_not_the_reported_rate():
    """The hierarchical VAE's q(z1 | x) is one Gaussian per data point and p(z1 | z2) one per value of z2: the rate
    of z1 pairs them value by value, Σ_k q(k | z1) KL(q(z1 | x) ‖ p(z1 | k)) with analytic KL, per dimension, and
    anchors multiply each dimension's share without entering the reported rate or ELBO."""
    from pyro import poutine
    from pyro.distributions import Normal
    from torch.distributions import kl_divergence

    from pyroib.guides.hvae import Guide
    from pyroib.handlers import bottleneck

    torch.manual_seed(0)
    config = Config(data_shape=(1, 4, 4), layer_sizes=(3, 4), hidden=(8,), layer_hidden=(5,))
    model, guide = Model(config), Guide(config)
    x = torch.rand(6, 1, 4, 4)
    weights = torch.tensor([0.5, 2.0, 3.0])
    objective = InfoELBO(analytic_kl=True)
    drawn = poutine.trace(guide).get_trace(x)
    for name in [n for n in drawn.nodes if n != "z1"]:
        drawn.remove_node(name)
    plain = objective.terms(model, poutine.replay(guide, trace=drawn), x)
    anchored_model, anchored_guide = bottleneck(model, guide, anchors={"z1": weights})
    anchored = objective.terms(anchored_model, poutine.replay(anchored_guide, trace=drawn), x)
    with torch.no_grad():
        loc, scale = guide.encode(x)
        cluster = guide.upper(2, drawn.nodes["z1"]["value"]).probs
        per_dim = torch.zeros(3)
        for k in range(4):
            p_z1 = model.conditional(1, torch.tensor([k])).base_dist
            per_dim += (cluster[:, k : k + 1] * kl_divergence(Normal(loc, scale), p_z1)).sum(0)
    assert plain.kl_per_dim["z1"] == pytest.approx(per_dim / 6, rel=1e-4)
    assert float(plain.values["rate/z1"]) == pytest.approx(float(per_dim.sum() / 6), rel=1e-4)
    assert float(anchored.values["rate/z1"]) == pytest.approx(float(plain.values["rate/z1"]), rel=1e-6)
    assert float(anchored.values["elbo"]) == pytest.approx(float(plain.values["elbo"]), rel=1e-6)
    assert float(anchored.loss - plain.loss) == pytest.approx(float(((weights - 1) * per_dim).sum()), rel=1e-4)


def test_python_specs_start_from_the_architecture_defaults_the_command_uses():
    from pyroib.cli.train import spec_from_args
    from pyroib.run import RunSpec

    for model in ("hvae", "beta-vae", "vae"):
        from_python = RunSpec.for_model(model, dataset="digits", epochs=3)
        from_cli, _ = spec_from_args(["--model", model, "--dataset", "digits", "--epochs", "3", "--out", "x"])
        for name in ("beta", "binarize", "batch_size", "lr", "epochs"):
            assert getattr(from_python, name) == getattr(from_cli, name), (model, name)
    assert RunSpec.for_model("hvae", batch_size=64).batch_size == 64


@pytest.mark.parametrize("model, flags", [("hvae", []), ("gmvae", ["--summed-in", "model"])])
def test_batch_level_objectives_refuse_a_code_whose_prior_depends_on_the_cluster(capsys, tmp_path, model, flags):
    argv = ["train", "--model", model, *TINY, *flags, "--objective", "beta-tcvae", "--out", str(tmp_path / "r")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "whose draw or prior varies with an enumerated site" in err and len(err.strip().splitlines()) == 1


class _Duplicated:
    """Two binary pixels that are always equal (TC(x) = H(x_1) = log 2), a code z1 that copies the first pixel
    ``copies`` times (sd 0.01), and a decoder that reads the pixel back exactly."""

    def __init__(self, copies):
        from pyroib.hierarchy import Layer

        self.layers = [Layer(copies, "gaussian")]
        self.copies = copies

    def likelihood(self, logits):
        import pyro.distributions as dist

        return dist.Bernoulli(logits=logits).to_event(3)

    def decoder(self, z):
        return (40 * (z[:, :1] - 0.5)).expand(-1, 2).reshape(-1, 1, 1, 2)

    def encode(self, x):
        loc = x.reshape(-1, 2)[:, :1].expand(-1, self.copies)
        return loc, torch.full_like(loc, 0.01)


@pytest.mark.parametrize("copies", [1, 2])
def test_corex_term_of_a_known_code(copies):
    """One copy: Σ_i I(x_i; z) = 2 log 2 and Σ_j I(z_j; x) = log 2, so the term is TC(x) = log 2. Two copies of the
    same code: Σ_j I(z_j; x) = 2 log 2 and the term is 0; subtracting the joint I(x; z) = log 2 instead would read
    log 2 again, more than the layer explains."""
    from pyroib.layer_information import layer_information

    pixel = torch.bernoulli(torch.full((1000, 1), 0.5), generator=torch.Generator().manual_seed(0))
    x = pixel.expand(-1, 2).reshape(-1, 1, 1, 2).contiguous()
    program = _Duplicated(copies)
    result = layer_information(program, program, x, max_points=1000)
    expected = math.log(2) if copies == 1 else 0.0
    assert result["corex_term/z1"] == pytest.approx(expected, abs=0.02)
    assert result["layer_mi/z1"] == pytest.approx(math.log(2), abs=0.02)
    assert result["corex_bound"] <= math.log(2) + 0.02
