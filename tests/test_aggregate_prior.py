"""fit-prior, sample, evaluation under a swapped prior and the report section, on a tiny digits run."""

import math
import shutil

import matplotlib.image
import pytest
import torch

from pyroib import cli
from pyroib.aggregate_prior import (
    AGGREGATE_FILE,
    aggregate_variance,
    per_dim_mutual_information,
    report_section,
    training_encodings,
)
from pyroib.data import load_dataset
from pyroib.evaluate import evaluate_run
from pyroib.priors import AggregatePosterior, JointAggregatePosterior, StandardNormal
from pyroib.run import RunSpec, load_run
from pyroib.train import train

LATENT = 3


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "digits"
    spec = RunSpec(
        model="vae",
        model_config={"data_shape": [1, 8, 8], "latent_dim": LATENT, "hidden": [32]},
        dataset="digits",
        epochs=2,
        batch_size=64,
        seed=1,
        device="cpu",
    )
    train(spec, out, progress=False)
    return out


@pytest.fixture
def run_dir(trained, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(trained, copy)
    return copy


def test_fit_prior_stores_both_forms_of_the_training_encodings(run_dir, capsys):
    assert cli.main(["fit-prior", str(run_dir), "--max-components", "0", "--device", "cpu"]) == 0
    assert "training encodings" in capsys.readouterr().out
    state = torch.load(run_dir / AGGREGATE_FILE, weights_only=True)
    loc, scale = training_encodings(load_run(run_dir))
    assert state["n_encodings"] == loc.shape[0]
    factorised = AggregatePosterior.from_state_dict(state["factorised"])
    joint = AggregatePosterior.from_state_dict(state["joint"])
    assert not factorised.joint and joint.joint
    for form in (factorised, joint):
        torch.testing.assert_close(form.loc, loc)
        torch.testing.assert_close(form.scale, scale)
    # The stored variance is the law of total variance; check it against draws from the mixture itself.
    draws = factorised.sample(200_000, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(state["variance"], draws.var(0), rtol=0.03, atol=1e-3)


def test_fit_prior_subsample_is_the_same_encodings_for_both_forms(run_dir):
    assert cli.main(["fit-prior", str(run_dir), "--max-components", "50", "--device", "cpu"]) == 0
    state = torch.load(run_dir / AGGREGATE_FILE, weights_only=True)
    loc, _ = training_encodings(load_run(run_dir))
    kept = state["factorised"]["loc"]
    assert kept.shape == (50, LATENT)
    torch.testing.assert_close(state["joint"]["loc"], kept)
    assert ((kept[:, None, :] == loc[None]).all(-1).sum(1) >= 1).all()  # every kept row is an encoding


@pytest.mark.parametrize("prior", ["standard", "aggregate", "aggregate-joint"])
def test_sample_writes_a_grid_of_the_requested_size(run_dir, tmp_path, prior):
    png = tmp_path / "grid.png"
    assert cli.main(["sample", str(run_dir), "--prior", prior, "--n", "10", "--out", str(png), "--device", "cpu"]) == 0
    image = matplotlib.image.imread(png)
    columns, rows, side, pad = math.ceil(math.sqrt(10)), 3, 8, 2
    assert image.shape[:2] == (rows * (side + pad) + pad, columns * (side + pad) + pad)
    assert (run_dir / AGGREGATE_FILE).exists() == (prior != "standard")  # fitted on the fly and kept


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--prior", "vamp"], "unknown --prior 'vamp'"),
        (["--n", "0"], "--n must be at least 1"),
    ],
)
def test_sample_rejects_bad_input(run_dir, tmp_path, capsys, argv, message):
    assert cli.main(["sample", str(run_dir), "--out", str(tmp_path / "x.png"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_sample_and_fit_prior_report_a_missing_run(tmp_path, capsys):
    for argv in (
        ["sample", str(tmp_path / "nothing"), "--out", str(tmp_path / "x.png")],
        ["fit-prior", str(tmp_path / "nothing")],
    ):
        assert cli.main(argv) == 2
        assert "does not exist" in capsys.readouterr().err


def test_evaluating_under_another_prior_leaves_the_model_untouched(run_dir):
    run = load_run(run_dir)
    original = {k: v.clone() for k, v in run.model.state_dict().items()}
    prior_module = run.model.prior
    # One joint component at (0, I) is the standard normal: the same density, so the same importance-weighted NLL.
    unit = JointAggregatePosterior.fit(torch.zeros(1, LATENT), torch.ones(1, LATENT))
    with_standard = evaluate_run(run, prior=StandardNormal(LATENT), iw_samples=20)
    with_unit = evaluate_run(run, prior=unit, iw_samples=20)
    assert run.model.prior is prior_module
    assert all(torch.equal(v, run.model.state_dict()[k]) for k, v in original.items())
    assert with_unit["nll_iw"] == pytest.approx(with_standard["nll_iw"], abs=1e-4)
    # A prior far from the codes must read a much worse bound.
    far = JointAggregatePosterior.fit(torch.full((1, LATENT), 10.0), torch.ones(1, LATENT))
    assert evaluate_run(run, prior=far, iw_samples=20)["nll_iw"] > with_standard["nll_iw"] + 50


def test_evaluate_command_under_the_aggregate_prior(run_dir, capsys):
    """`pyroib evaluate --prior aggregate` is evaluate_run under the stored factorised aggregate."""
    import json

    argv = ["evaluate", str(run_dir), "--iw-samples", "20", "--device", "cpu", "--full-data-points", "0", "--json"]
    assert cli.main(argv) == 0
    standard = json.loads(capsys.readouterr().out)
    assert cli.main([*argv, "--prior", "aggregate"]) == 0
    aggregate = json.loads(capsys.readouterr().out)
    assert aggregate["prior"] == "aggregate" and (run_dir / AGGREGATE_FILE).exists()
    run = load_run(run_dir, "cpu")
    factorised = AggregatePosterior.from_state_dict(
        torch.load(run_dir / AGGREGATE_FILE, weights_only=True)["factorised"]
    )
    direct = evaluate_run(run, prior=factorised, iw_samples=20, full_data_points=0)
    assert aggregate["nll_iw"] == pytest.approx(direct["nll_iw"], rel=1e-5)
    assert aggregate["rate"] == pytest.approx(direct["rate"], rel=1e-5)
    # the aggregate is a different p(z): the same decoder and guide, a different rate and bound
    assert aggregate["rate"] != pytest.approx(standard["rate"], rel=1e-3)
    assert aggregate["distortion"] == pytest.approx(standard["distortion"], rel=1e-5)


def test_evaluate_command_rejects_an_unknown_prior(run_dir, capsys):
    assert cli.main(["evaluate", str(run_dir), "--prior", "vamp", "--device", "cpu"]) == 2
    assert "unknown --prior 'vamp'" in capsys.readouterr().err


def test_per_dim_mutual_information_matches_the_gaussian_closed_form():
    # q(z_j|x) = N(mu(x), s^2) with mu ~ N(0, 1 - s^2): the aggregate is N(0, 1) and I(x; z_j) = -log s.
    generator = torch.Generator().manual_seed(0)
    s = torch.tensor([0.3, 0.5, 0.9])
    loc = torch.randn(1500, 3, generator=generator) * (1 - s**2).sqrt()
    information = per_dim_mutual_information(loc, s.expand(1500, 3), samples=2, generator=generator)
    torch.testing.assert_close(information, -s.log(), atol=0.04, rtol=0)
    constant = per_dim_mutual_information(torch.zeros(100, 2), torch.ones(100, 2), generator=generator)
    torch.testing.assert_close(constant, torch.zeros(2), atol=1e-6, rtol=0)


def test_aggregate_variance_is_the_law_of_total_variance():
    loc = torch.tensor([[0.0], [2.0]])
    scale = torch.tensor([[1.0], [3.0]])
    # Mixture of N(0, 1) and N(2, 9): variance = mean of variances 5 + variance of means 1.
    torch.testing.assert_close(aggregate_variance(loc, scale), torch.tensor([6.0]))


def test_report_section_writes_its_figures(run_dir):
    run = load_run(run_dir)
    splits = load_dataset("digits", binarize="dynamic")
    out = run_dir / "report"
    out.mkdir()
    figures = report_section(run, splits, out)
    assert len(figures) == 2
    for name in figures.values():
        assert matplotlib.image.imread(out / name).shape[0] > 100
    assert (out / "aggregate_prior.json").exists()


def test_a_stale_aggregate_prior_is_refitted_with_its_subsample_size(run_dir, tmp_path):
    from dataclasses import replace

    from pyroib.run import read_spec

    assert cli.main(["fit-prior", str(run_dir), "--max-components", "50", "--device", "cpu"]) == 0
    assert torch.load(run_dir / AGGREGATE_FILE, weights_only=True)["epoch"] == 2
    train(replace(read_spec(run_dir), epochs=3), run_dir, resume=True, progress=False)
    # the stored aggregate encodes epoch 2's weights; sampling from epoch 3 refits it, 50 components as before
    assert (
        cli.main(
            [
                "sample",
                str(run_dir),
                "--prior",
                "aggregate",
                "--n",
                "4",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "grid.png"),
            ]
        )
        == 0
    )
    state = torch.load(run_dir / AGGREGATE_FILE, weights_only=True)
    loc, _ = training_encodings(load_run(run_dir))
    assert state["epoch"] == 3 and state["factorised"]["loc"].shape == (50, LATENT)
    assert ((state["joint"]["loc"][:, None, :] == loc[None]).all(-1).sum(1) >= 1).all()
    best = load_run(run_dir, "cpu", checkpoint="best")
    assert cli.main(["fit-prior", str(run_dir), "--checkpoint", "best", "--device", "cpu"]) == 0
    assert torch.load(run_dir / AGGREGATE_FILE, weights_only=True)["epoch"] == best.epoch
