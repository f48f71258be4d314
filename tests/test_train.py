"""fit, checkpoints, resume and the command line, end to end on the digits set."""

import json
import math
from dataclasses import replace

import pytest
import torch

from pyroib import cli
from pyroib.checkpoint import load_checkpoint, read_jsonl
from pyroib.objectives import InfoELBO
from pyroib.run import RunSpec
from pyroib.train import TrainingDiverged, train

SMALL = {"data_shape": [1, 8, 8], "latent_dim": 3, "hidden": [32]}


def spec(**kw):
    base = RunSpec(
        model="vae", model_config=SMALL, dataset="digits", epochs=2, batch_size=64, beta=2.0, seed=3, device="cpu"
    )
    return replace(base, **kw)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    train(spec(epochs=3), tmp_path / "full", progress=False)
    train(spec(epochs=2), tmp_path / "part", progress=False)
    rows = train(spec(epochs=3), tmp_path / "part", resume=True, progress=False)
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for key in ("model", "guide"):
        for name, value in full[key].items():
            assert torch.equal(value, part[key][name]), name
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows[-1]["val_elbo"] == read_jsonl(tmp_path / "full" / "metrics.jsonl")[-1]["val_elbo"]


def test_resume_may_lower_the_learning_rate_and_records_it(tmp_path):
    train(spec(epochs=1), tmp_path / "run", progress=False)
    rows = train(spec(epochs=2, lr=1e-4), tmp_path / "run", resume=True, progress=False)
    assert [r["lr"] for r in rows] == [spec().lr, 1e-4]
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["optimizer"]["param_groups"][0]["lr"] == 1e-4


def _record_applied_gradient_norms(monkeypatch, per: int = 1) -> list[float]:
    """Patch Adam.step to record the norm of every gradient it applies, divided by ``per``."""
    applied = []
    step = torch.optim.Adam.step

    def spy(self, *args, **kwargs):
        grads = [p.grad for group in self.param_groups for p in group["params"] if p.grad is not None]
        applied.append(float(torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))) / per)
        return step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.Adam, "step", spy)
    return applied


def test_grad_clip_bounds_every_applied_gradient_and_counts_the_clipped_steps(tmp_path, monkeypatch):
    from pyroib.data import load_dataset

    n_train = load_dataset("digits").train.shape[0]
    step = torch.optim.Adam.step
    applied = _record_applied_gradient_norms(monkeypatch)
    clip = 0.5  # nats per data point per unit of parameter: far below this model's gradient norms
    rows = train(spec(epochs=1, grad_clip=clip), tmp_path / "tight", progress=False)
    assert rows[0]["grad_clip"] == clip and rows[0]["clipped_steps"] == rows[0]["step"] == len(applied)
    # the surrogate is N times the per-point loss, so the clip bounds N times the per-point gradient norm
    assert max(applied) <= clip * n_train * (1 + 1e-5)
    assert min(applied) >= clip * n_train * (1 - 1e-5)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    loose = train(spec(epochs=1, grad_clip=1e12), tmp_path / "loose", progress=False)
    train(spec(epochs=1), tmp_path / "plain", progress=False)
    assert loose[0]["clipped_steps"] == 0
    plain = load_checkpoint(tmp_path / "plain" / "checkpoint.pt")["model"]
    for name, value in load_checkpoint(tmp_path / "loose" / "checkpoint.pt")["model"].items():
        assert torch.equal(value, plain[name]), name  # a clip that never binds changes nothing
    tight = load_checkpoint(tmp_path / "tight" / "checkpoint.pt")["model"]
    assert any(not torch.equal(value, plain[name]) for name, value in tight.items())
    # a long run may add a clip when it resumes; a meaningless clip is refused before anything is written
    rows = train(spec(epochs=2, grad_clip=100.0), tmp_path / "plain", resume=True, progress=False)
    assert [r["grad_clip"] for r in rows] == [None, 100.0]
    for bad in (0.0, -1.0, float("inf")):
        with pytest.raises(ValueError, match="--grad-clip must be a positive finite"):
            train(spec(epochs=1, grad_clip=bad), tmp_path / f"bad{bad}", progress=False)
        assert not (tmp_path / f"bad{bad}").exists()


def test_clipped_runs_log_the_per_point_gradient_norm_the_clip_compares(tmp_path, monkeypatch):
    from pyroib.data import load_dataset

    n_train = load_dataset("digits").train.shape[0]
    step = torch.optim.Adam.step
    applied = _record_applied_gradient_norms(monkeypatch, per=n_train)
    (loose,) = train(spec(epochs=1, grad_clip=1e12), tmp_path / "loose", progress=False)
    monkeypatch.setattr(torch.optim.Adam, "step", step)
    assert loose["clipped_steps"] == 0
    assert loose["grad_norm_max"] == pytest.approx(max(applied), rel=1e-5)
    assert loose["grad_norm_mean"] == pytest.approx(sum(applied) / len(applied), rel=1e-5)
    # the logged maximum is where clipping starts: the same seed gives the same steps up to the largest one, which
    # a clip just below it binds and a clip just above it does not
    (below,) = train(spec(epochs=1, grad_clip=max(applied) * (1 - 1e-4)), tmp_path / "below", progress=False)
    assert below["clipped_steps"] >= 1
    (above,) = train(spec(epochs=1, grad_clip=max(applied) * (1 + 1e-4)), tmp_path / "above", progress=False)
    assert above["clipped_steps"] == 0 and above["grad_norm_max"] == pytest.approx(max(applied), rel=1e-5)
    (plain,) = train(spec(epochs=1), tmp_path / "plain", progress=False)
    assert "grad_norm_max" not in plain and "grad_norm_mean" not in plain


def _scripted_validation(monkeypatch, elbos):
    """Make each epoch's validation ELBO the next of ``elbos`` (training itself is untouched)."""
    import pyroib.train as training

    real, queue = training.split_terms, list(elbos)

    def scripted(*args, **kwargs):
        values, kl = real(*args, **kwargs)
        return {**values, "elbo": queue.pop(0)}, kl

    monkeypatch.setattr(training, "split_terms", scripted)


def test_best_checkpoint_keeps_the_best_validation_epoch_across_resumes(tmp_path, monkeypatch, capsys):
    from pyroib.run import load_run

    _scripted_validation(monkeypatch, [-10.0, -5.0, -7.0, -4.0, -3.0, -8.0, -1.0])  # "two" takes the 4th, 5th
    train(spec(epochs=3), tmp_path / "run", progress=False)
    best = load_checkpoint(tmp_path / "run" / "best.pt")
    assert (best["epoch"], best["val_elbo"]) == (2, -5.0)
    train(spec(epochs=2), tmp_path / "two", progress=False)  # the same seed stopped after epoch 2
    two = load_checkpoint(tmp_path / "two" / "checkpoint.pt")
    for name, value in two["model"].items():
        assert torch.equal(value, best["model"][name]), name
    # a resumed run compares against the stored best, not against -inf
    train(spec(epochs=4), tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 2
    train(spec(epochs=5), tmp_path / "run", resume=True, progress=False)
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 5
    run = load_run(tmp_path / "run", "cpu", checkpoint="best")
    assert run.epoch == 5 and load_run(tmp_path / "two", "cpu").epoch == 2
    monkeypatch.undo()
    assert (
        cli.main(
            [
                "evaluate",
                str(tmp_path / "two"),
                "--checkpoint",
                "best",
                "--iw-samples",
                "2",
                "--full-data-points",
                "0",
                "--json",
                "--device",
                "cpu",
            ]
        )
        == 0
    )
    result = json.loads(capsys.readouterr().out)
    assert (result["checkpoint"], result["epoch"]) == ("best", 2)


def test_best_checkpoint_errors(tmp_path, capsys):
    from pyroib.run import load_run

    train(spec(epochs=1), tmp_path / "run", progress=False)
    (tmp_path / "run" / "best.pt").unlink()  # as in a run trained before pyroib kept one
    with pytest.raises(FileNotFoundError, match="no best.pt"):
        load_run(tmp_path / "run", "cpu", checkpoint="best")
    assert cli.main(["evaluate", str(tmp_path / "run"), "--checkpoint", "first", "--device", "cpu"]) == 2
    assert "unknown checkpoint 'first'" in capsys.readouterr().err


def test_resume_refuses_changed_settings_and_new_run_refuses_existing_dir(tmp_path):
    train(spec(epochs=1), tmp_path / "run", progress=False)
    with pytest.raises(ValueError, match="beta"):
        train(spec(epochs=2, beta=5.0), tmp_path / "run", resume=True, progress=False)
    with pytest.raises(FileExistsError, match="--resume"):
        train(spec(epochs=2), tmp_path / "run", progress=False)
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        train(spec(epochs=2), tmp_path / "empty", resume=True, progress=False)


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path, monkeypatch):
    train(spec(epochs=1), tmp_path / "run", progress=False)
    good = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    original = InfoELBO.terms

    def poisoned(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(InfoELBO, "terms", poisoned)
    with pytest.raises(TrainingDiverged, match="epoch 1"):
        train(spec(epochs=3), tmp_path / "run", resume=True, progress=False)
    after = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert after["epoch"] == good["epoch"] == 1
    assert all(torch.equal(v, after["model"][k]) for k, v in good["model"].items())
    assert len(read_jsonl(tmp_path / "run" / "metrics.jsonl")) == 1


def test_an_epoch_summed_in_folds_logs_what_one_sum_logs_and_a_nan_in_an_early_fold_still_stops(tmp_path, monkeypatch):
    import pyroib.train as training

    whole = train(spec(epochs=1), tmp_path / "whole", progress=False)
    monkeypatch.setattr(training, "FOLD_STEPS", 3)  # digits at batch 64: 26 steps, so 8 folds and a rest
    folded = train(spec(epochs=1), tmp_path / "folded", progress=False)
    assert whole[0]["step"] == folded[0]["step"] > 3 * 3
    for key, value in whole[0].items():
        if key.startswith("train_") and key != "train_seconds":
            assert folded[0][key] == pytest.approx(value, rel=1e-9), key
    original, calls = InfoELBO.terms, []

    def nan_at_step_two(self, *args, **kwargs):
        terms = original(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            terms.loss = terms.loss * float("nan")
        return terms

    monkeypatch.setattr(InfoELBO, "terms", nan_at_step_two)
    with pytest.raises(TrainingDiverged, match="NaN or infinite"):
        train(spec(epochs=1), tmp_path / "poisoned", progress=False)


def test_an_exploding_finite_loss_stops_as_diverged(tmp_path):
    train(spec(epochs=1), tmp_path / "run", progress=False)
    good = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    # Adam at lr 1e6 moves every weight by about 1e6 per step: the loss stays finite but grows by orders of magnitude
    with pytest.raises(TrainingDiverged, match="exceeded 1e\\+04 times its value at the start"):
        train(spec(epochs=3, lr=1e6), tmp_path / "run", resume=True, progress=False)
    after = load_checkpoint(tmp_path / "run" / "checkpoint.pt")
    assert after["epoch"] == 1 and all(torch.equal(v, after["model"][k]) for k, v in good["model"].items())


@pytest.mark.parametrize("lr", [0.0, -1e-3, float("inf")])
def test_a_learning_rate_that_cannot_train_is_refused(tmp_path, lr):
    with pytest.raises(ValueError, match="--lr must be a positive finite"):
        train(spec(lr=lr), tmp_path / "run", progress=False)
    assert not (tmp_path / "run").exists()


def test_torn_metrics_line_is_dropped_and_checkpoint_loads_weights_only(tmp_path):
    train(spec(epochs=1), tmp_path / "run", progress=False)
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "val_el')  # a kill in the middle of a write
    assert [r["epoch"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl")] == [1]
    (tmp_path / "bad.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="damaged"):
        load_checkpoint(tmp_path / "bad.pt")


SCHEDULE_SETTINGS = {
    "linear": {"warmup_epochs": 1.5},
    "cyclical": {"cycle_epochs": 1.0},
    "capacity": {"capacity_epochs": 2.0, "capacity_max": 3.0},
}


@pytest.mark.parametrize("schedule", ["linear", "cyclical", "capacity"])
def test_every_schedule_trains_and_logs_beta(tmp_path, schedule):
    rows = train(spec(schedule=schedule, **SCHEDULE_SETTINGS[schedule]), tmp_path / schedule, progress=False)
    assert all(torch.isfinite(torch.tensor(r["val_elbo"])) for r in rows)
    if schedule == "capacity":
        last = rows[-1]  # capacity_epochs equals the run's length, so C reaches 3 nats at the final step
        assert last["capacity"] == pytest.approx(3.0 * (last["step"] - 1) / last["step"])
    else:
        assert 0 < rows[0]["beta"] <= 2.0


def run_cli(args, capsys):
    code = cli.main(args)
    out = capsys.readouterr()
    return code, out.out, out.err


def test_cli_train_evaluate_report_on_digits(tmp_path, capsys):
    out = tmp_path / "run"
    code, _, err = run_cli(
        [
            "train",
            "--model",
            "vae",
            "--dataset",
            "digits",
            "--epochs",
            "2",
            "--latent-dim",
            "4",
            "--hidden",
            "64",
            "--beta",
            "1",
            "--anchors",
            "1,1,2,0.5",
            "--seed",
            "1",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(out),
        ],
        capsys,
    )
    assert code == 0, err
    config = json.loads((out / "config.json").read_text())
    assert config["anchors"] == [1, 1, 2, 0.5] and config["model_config"]["latent_dim"] == 4
    code, text, err = run_cli(["evaluate", str(out), "--split", "test", "--iw-samples", "20", "--json"], capsys)
    assert code == 0, err
    result = json.loads(text)
    assert len(result["kl_per_dim"]) == 4
    assert result["nll_iw"] <= -result["elbo"] + 1e-6  # the IWAE bound is at least as tight as the ELBO
    assert result["elbo"] == pytest.approx(-(result["rate"] + result["distortion"]))
    assert 0 <= result["active_units"] <= 4
    code, _, err = run_cli(["report", str(out), "--iw-samples", "5"], capsys)
    assert code == 0, err
    pngs = sorted(p.name for p in (out / "report").glob("*.png"))
    assert {"reconstructions.png", "samples.png", "traversals.png", "training_curves.png", "kl_per_dim.png"} <= set(
        pngs
    )
    assert "elbo" in (out / "report" / "report.md").read_text()


USER_MODEL = """
from dataclasses import dataclass
import pyro, pyro.distributions as dist, torch
from pyro.nn import PyroModule
from pyroib.plates import data_plate
from pyroib.priors import StandardNormal

@dataclass(frozen=True)
class Config:
    data_shape: tuple = (1, 8, 8)
    latent_dim: int = 2

class Model(PyroModule):
    def __init__(self, config, prior=None):
        super().__init__()
        self.prior = prior or StandardNormal(config.latent_dim)
        self.decoder = torch.nn.Linear(config.latent_dim, 64)
    def forward(self, x, y=None, index=None, size=None):
        with data_plate(x, index, size):
            z = pyro.sample("z", self.prior(x.shape[0]))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x.reshape(x.shape[0], -1))

class Guide(PyroModule):
    def __init__(self, config):
        super().__init__()
        self.net = torch.nn.Linear(64, 2 * config.latent_dim)
    def encode(self, x):
        loc, s = self.net(x.reshape(x.shape[0], -1)).chunk(2, -1)
        return loc, torch.nn.functional.softplus(s) + 1e-3
    def forward(self, x, y=None, index=None, size=None):
        with data_plate(x, index, size):
            loc, scale = self.encode(x)
            pyro.sample("z", dist.Normal(loc, scale).to_event(1))
"""


def test_cli_trains_a_users_own_model_file(tmp_path, capsys):
    path = tmp_path / "my_model.py"
    path.write_text(USER_MODEL)
    code, _, err = run_cli(
        [
            "train",
            "--model",
            str(path),
            "--dataset",
            "digits",
            "--epochs",
            "1",
            "--latent-dim",
            "3",
            "--device",
            "cpu",
            "--no-progress",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 0, err
    code, text, err = run_cli(["evaluate", str(tmp_path / "r"), "--iw-samples", "4", "--json"], capsys)
    assert code == 0, err
    assert len(json.loads(text)["kl_per_dim"]) == 3


@pytest.mark.parametrize(
    "args, message",
    [
        (["--dataset", "nope"], "dataset"),
        (["--model", "nope"], "unknown model"),
        (["--latent-dim", "4", "--anchors", "0.5,0.5,0.5,0.5,0.5,0.5"], "anchor"),
        (["--beta", "-1"], "beta"),
        (["--schedule", "sigmoid"], "schedule"),
        (["--warmup-epochs", "15"], "--warmup-epochs belongs to the linear schedule"),
        (["--schedule", "linear", "--cycle-epochs", "4"], "--cycle-epochs belongs to the cyclical schedule"),
        (["--capacity-max", "30"], "--capacity-max belongs to the capacity schedule"),
        (["--binarize", "none", "--likelihood", "bernoulli"], "binary"),
        (["--network", "conv", "--hidden", "32,32,32,32"], "divisible"),
        (["--prior", "mixture", "--anchors", "1,1,1,1", "--latent-dim", "4"], "factoris"),
    ],
)
def test_cli_bad_input_gives_a_clear_message(tmp_path, capsys, args, message):
    base = [
        "train",
        "--model",
        "vae",
        "--dataset",
        "digits",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--no-progress",
        "--out",
        str(tmp_path / "r"),
    ]
    code, _, err = run_cli(base + args, capsys)
    assert code == 2
    assert message in err.lower() and "Traceback" not in err
    assert not (tmp_path / "r" / "checkpoint.pt").exists()


def test_cli_missing_run_and_corrupt_fashion_files(tmp_path, capsys):
    code, _, err = run_cli(["evaluate", str(tmp_path / "missing"), "--json"], capsys)
    assert code == 2 and "does not exist" in err
    import gzip

    for name in (
        "train-images-idx3-ubyte",
        "train-labels-idx1-ubyte",
        "t10k-images-idx3-ubyte",
        "t10k-labels-idx1-ubyte",
    ):
        (tmp_path / f"{name}.gz").write_bytes(gzip.compress(b"\x00" * 40))
    code, _, err = run_cli(
        [
            "train",
            "--dataset",
            "fashion-mnist",
            "--data-dir",
            str(tmp_path),
            "--epochs",
            "1",
            "--out",
            str(tmp_path / "r"),
        ],
        capsys,
    )
    assert code == 2 and "corrupt" in err


def test_python_api_fills_data_shape_from_the_dataset_and_refuses_a_contradiction(tmp_path):
    rows = train(
        RunSpec(model="vae", dataset="digits", epochs=1, device="cpu", model_config={"latent_dim": 2, "hidden": [16]}),
        tmp_path / "a",
        progress=False,
    )
    assert json.loads((tmp_path / "a" / "config.json").read_text())["model_config"]["data_shape"] == [1, 8, 8]
    assert rows[-1]["epoch"] == 1
    with pytest.raises(ValueError, match="data_shape"):
        train(
            RunSpec(model="vae", dataset="digits", epochs=1, device="cpu", model_config={"data_shape": [1, 28, 28]}),
            tmp_path / "b",
            progress=False,
        )


def test_batch_level_objectives_drop_a_last_minibatch_too_small_for_their_estimator(tmp_path):
    # digits has 1,293 training images: batch 646 leaves a last minibatch of one, which MSS cannot use
    rows = train(spec(model="beta-tcvae", epochs=1, batch_size=646), tmp_path / "tc", progress=False)
    assert rows[-1]["step"] == 2
    assert "train_total_correlation" in rows[-1]


def test_init_from_starts_a_run_from_another_runs_weights(tmp_path):
    from pyroib.run import build, warm_start

    train(spec(epochs=2), tmp_path / "source", progress=False)
    source = load_checkpoint(tmp_path / "source" / "best.pt")
    # a learning rate too small to move a float32 weight: the first epoch trains exactly the source's weights
    rows = train(spec(epochs=1, lr=1e-30, init_from=str(tmp_path / "source")), tmp_path / "warm", progress=False)
    warm = load_checkpoint(tmp_path / "warm" / "checkpoint.pt")
    for part in ("model", "guide"):
        for name, value in source[part].items():
            assert torch.equal(value, warm[part][name]), name
    cold = train(spec(epochs=1, lr=1e-30), tmp_path / "cold", progress=False)
    assert rows[0]["val_elbo"] > cold[0]["val_elbo"] + 1.0  # the trained weights, not a fresh initialisation
    # a resume may leave --init-from out and keeps the record of where the run started
    train(spec(epochs=2, lr=1e-30), tmp_path / "warm", resume=True, progress=False)
    assert json.loads((tmp_path / "warm" / "config.json").read_text())["init_from"] == str(tmp_path / "source")
    # another prior: the shared networks load, the VampPrior's pseudo-inputs keep their own start
    vamp = build(spec(prior="vamp", prior_options={"n_pseudo_inputs": 5}))
    summary = warm_start(vamp, tmp_path / "source" / "checkpoint.pt")
    assert summary["kept"] == ["model.prior.pseudo_raw"] and not summary["ignored"]
    last = load_checkpoint(tmp_path / "source" / "checkpoint.pt")
    for name, value in vamp.guide.state_dict().items():
        assert torch.equal(value, last["guide"][name]), name


def test_init_from_refuses_what_it_cannot_load(tmp_path):
    train(spec(epochs=1), tmp_path / "source", progress=False)
    with pytest.raises(FileNotFoundError, match="--init-from .* does not exist"):
        train(spec(epochs=1, init_from=str(tmp_path / "missing")), tmp_path / "a", progress=False)
    assert not (tmp_path / "a").exists()
    wider = replace(spec(), model_config={**SMALL, "latent_dim": 4})
    with pytest.raises(ValueError, match=r"shape \(.*\) there but .* in this run"):
        train(replace(wider, epochs=1, init_from=str(tmp_path / "source")), tmp_path / "b", progress=False)
    assert not (tmp_path / "b" / "checkpoint.pt").exists()
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match="no checkpoint there"):
        train(spec(epochs=1, init_from=str(tmp_path / "empty")), tmp_path / "c", progress=False)


def test_vamp_pseudo_inputs_start_at_training_images(tmp_path, capsys):
    from pyroib.data import load_dataset
    from pyroib.run import build, initialise_pseudo_inputs

    images = load_dataset("digits").train
    built = build(spec(prior="vamp", prior_options={"n_pseudo_inputs": 7, "init": "data"}))
    initialise_pseudo_inputs(built, images)
    chosen = torch.randperm(images.shape[0], generator=torch.Generator().manual_seed(spec().seed))[:7]
    expected = images[chosen].clamp(1e-3, 1 - 1e-3)
    assert torch.allclose(built.model.prior.pseudo_inputs, expected, atol=1e-6)
    # and training starts there: the CLI flag, refused for a prior without pseudo-inputs
    vamp = ["train", "--dataset", "digits", "--latent-dim", "3", "--hidden", "32", "--epochs", "1", "--prior", "vamp"]
    vamp += ["--prior-components", "7", "--prior-init", "data", "--no-progress", "--device", "cpu", "--seed", "3"]
    assert cli.main([*vamp, "--out", str(tmp_path / "vamp")]) == 0
    stored = json.loads((tmp_path / "vamp" / "config.json").read_text())
    assert stored["prior_options"] == {"n_pseudo_inputs": 7, "init": "data"}
    for flag in (["--prior-init", "data"], ["--prior-range-map", "clamp"]):
        assert (
            cli.main(["train", "--dataset", "digits", "--prior", "standard", *flag, "--out", str(tmp_path / "std")])
            == 2
        )
        assert f"{flag[0]}" in capsys.readouterr().err and not (tmp_path / "std").exists()
    assert cli.main([*vamp, "--prior-range-map", "clamp", "--out", str(tmp_path / "clamp")]) == 0
    from pyroib.run import load_run

    assert load_run(tmp_path / "clamp").model.prior.range_map == "clamp"


def test_flow_prior_size_from_the_cli_and_prior_flags_refused_for_other_priors(tmp_path, capsys):
    from pyroib.run import load_run

    assert (
        cli.main(
            [
                "train",
                "--dataset",
                "digits",
                "--latent-dim",
                "4",
                "--hidden",
                "32",
                "--epochs",
                "1",
                "--prior",
                "flow",
                "--prior-flow-layers",
                "3",
                "--prior-flow-hidden",
                "16,8",
                "--no-progress",
                "--device",
                "cpu",
                "--seed",
                "3",
                "--out",
                str(tmp_path / "flow"),
            ]
        )
        == 0
    )
    prior = load_run(tmp_path / "flow").model.prior
    assert len(prior.layers) == 3
    first_layer_widths = [m.out_features for m in prior.layers[0].modules() if isinstance(m, torch.nn.Linear)]
    assert first_layer_widths[:2] == [16, 8]
    for prior_name, flag in (
        ("flow", ["--prior-components", "5"]),
        ("vamp", ["--prior-flow-layers", "3"]),
        ("standard", ["--prior-flow-hidden", "16"]),
    ):
        assert (
            cli.main(["train", "--dataset", "digits", "--prior", prior_name, *flag, "--out", str(tmp_path / "refused")])
            == 2
        )
        err = capsys.readouterr().err
        assert flag[0] in err and f"got --prior {prior_name}" in err and not (tmp_path / "refused").exists()
    assert (
        cli.main(
            [
                "train",
                "--dataset",
                "digits",
                "--prior",
                "flow",
                "--prior-flow-hidden",
                "16,x",
                "--out",
                str(tmp_path / "refused"),
            ]
        )
        == 2
    )
    assert "comma-separated whole numbers" in capsys.readouterr().err


PRIOR_CLASSES = {
    "standard": "StandardNormal",
    "learned": "LearnedGaussian",
    "mixture": "MixtureOfGaussians",
    "vamp": "VampPrior",
    "flow": "FlowPrior",
}


@pytest.mark.parametrize("prior", PRIOR_CLASSES)
def test_every_prior_trains_the_vae_and_the_beta_vae_from_the_cli(tmp_path, capsys, prior):
    """β scales the whole KL to the prior, whichever prior it is: the loss is distortion + β·rate."""
    from pyroib.run import load_run

    for beta in ("1", "4"):
        out = tmp_path / f"beta{beta}"
        assert (
            cli.main(
                [
                    "train",
                    "--dataset",
                    "digits",
                    "--latent-dim",
                    "3",
                    "--hidden",
                    "32",
                    "--epochs",
                    "2",
                    "--prior",
                    prior,
                    "--beta",
                    beta,
                    "--no-progress",
                    "--device",
                    "cpu",
                    "--seed",
                    "3",
                    "--out",
                    str(out),
                ]
            )
            == 0
        )
        for row in read_jsonl(out / "metrics.jsonl"):
            assert row["train_loss"] == pytest.approx(
                row["train_distortion"] + float(beta) * row["train_rate"], rel=1e-4
            )
            assert row["train_elbo"] == pytest.approx(-(row["train_distortion"] + row["train_rate"]), rel=1e-4)
        assert type(load_run(out).model.prior).__name__ == PRIOR_CLASSES[prior]
        capsys.readouterr()
        assert cli.main(["evaluate", str(out), "--iw-samples", "20", "--json", "--device", "cpu"]) == 0
        result = json.loads(capsys.readouterr().out)
        # the importance-sampled NLL is a tighter bound than the ELBO's
        assert math.isfinite(result["elbo"]) and result["nll_iw"] <= -result["elbo"] + 0.5


def test_a_crash_between_the_log_and_the_checkpoint_leaves_a_log_the_resume_repairs(tmp_path, monkeypatch):
    """The epoch's row is logged before its checkpoint is written; a crash in between is redone on resume, and the
    log ends equal to the uninterrupted run's (a crash after the checkpoint but before the row once lost the row)."""
    import pyroib.train as training

    train(spec(epochs=3), tmp_path / "full", progress=False)
    original, calls = training.save_checkpoint, []

    def crash_on_the_second_epochs_checkpoint(state, path):
        calls.append(path.name)
        if path.name == "checkpoint.pt" and state["epoch"] == 2:
            raise KeyboardInterrupt  # as a kill would, after the row of epoch 2 was logged
        return original(state, path)

    monkeypatch.setattr(training, "save_checkpoint", crash_on_the_second_epochs_checkpoint)
    with pytest.raises(KeyboardInterrupt):
        train(spec(epochs=3), tmp_path / "part", progress=False)
    assert [r["epoch"] for r in read_jsonl(tmp_path / "part" / "metrics.jsonl")] == [1, 2]
    assert load_checkpoint(tmp_path / "part" / "checkpoint.pt")["epoch"] == 1
    monkeypatch.setattr(training, "save_checkpoint", original)
    rows = train(spec(epochs=3), tmp_path / "part", resume=True, progress=False)
    expected = read_jsonl(tmp_path / "full" / "metrics.jsonl")
    assert [{k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in rows] == [
        {k: v for k, v in r.items() if k not in ("seconds", "train_seconds")} for r in expected
    ]
