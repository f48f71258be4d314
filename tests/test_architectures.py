"""One table over every architecture with an information-term objective: trains from the CLI on digits, logs its
terms per epoch, evaluates the full-data terms, and (with critics) resumes exactly."""

import json
import math

import pytest
import torch

from pyroib import cli
from pyroib.architectures import ARCHITECTURES
from pyroib.checkpoint import load_checkpoint, read_jsonl
from pyroib.objectives import InfoELBO

TINY = [
    "--dataset",
    "digits",
    "--latent-dim",
    "3",
    "--hidden",
    "16",
    "--batch-size",
    "256",
    "--seed",
    "0",
    "--device",
    "cpu",
    "--no-progress",
]
CRITIC = ["--critic-width", "16", "--critic-depth", "1"]
# architecture -> (extra flags, terms its objective logs, the critic estimates evaluate reports)
TABLE = {
    "beta-tcvae": ([], {"index_code_mi", "total_correlation", "dimwise_kl"}, set()),
    "factorvae": (CRITIC, {"critic_tc"}, {"critic_tc"}),
    "infovae": ([], {"mmd"}, set()),
    "aae": (CRITIC, {"critic_marginal_kl"}, {"critic_marginal_kl"}),
    "bibae": (CRITIC, {"marginal_kl", "critic_data_kl"}, {"critic_data_kl"}),
}
FULL_DATA_KEYS = {"mutual_information", "total_correlation", "dimwise_kl", "marginal_kl", "mi_per_dim"}


def test_table_covers_every_architecture_with_extra_terms():
    # the VAE program's objectives; the vector-quantised generative codec has its own tests (test_vq_codec.py)
    assert set(TABLE) == {
        name for name, arch in ARCHITECTURES.items() if arch.objective is not InfoELBO and arch.program == "vae"
    }


def run(args, capsys):
    code = cli.main(args)
    captured = capsys.readouterr()
    assert code == 0, captured.err
    return captured.out


@pytest.mark.parametrize("name", sorted(TABLE))
def test_trains_logs_terms_and_evaluates_full_data_terms(name, tmp_path, capsys):
    flags, logged, critic_keys = TABLE[name]
    out = tmp_path / name
    run(["train", "--model", name, "--epochs", "1", *TINY, *flags, "--out", str(out)], capsys)
    (row,) = read_jsonl(out / "metrics.jsonl")
    for term in logged:
        assert math.isfinite(row[f"train_{term}"]) and math.isfinite(row[f"val_{term}"]), term
    result = json.loads(run(["evaluate", str(out), "--split", "test", "--iw-samples", "5", "--json"], capsys))
    assert FULL_DATA_KEYS | critic_keys <= set(result)
    assert result["full_data_points"] == result["n"] and not result["full_data_subsampled"]
    assert -0.05 <= result["mutual_information"] <= math.log(result["n"])  # an N-point aggregate caps MI at log N
    assert result["full_data_rate"] == pytest.approx(
        result["mutual_information"] + result["total_correlation"] + result["dimwise_kl"], abs=1e-3
    )
    assert result["marginal_kl"] == pytest.approx(result["total_correlation"] + result["dimwise_kl"], abs=1e-3)
    assert len(result["mi_per_dim"]) == 3


def test_weights_are_flags_and_aae_masks_the_rate_by_default(tmp_path, capsys):
    out = tmp_path / "aae"
    run(
        [
            "train",
            "--model",
            "aae",
            "--epochs",
            "1",
            *TINY,
            *CRITIC,
            "--divergence",
            "mmd",
            "--marginal-weight",
            "50",
            "--out",
            str(out),
        ],
        capsys,
    )
    config = json.loads((out / "config.json").read_text())
    assert config["beta"] == 0.0
    assert config["objective_options"]["divergence"] == "mmd"
    assert config["objective_options"]["marginal_weight"] == 50.0
    row = read_jsonl(out / "metrics.jsonl")[0]
    assert "train_mmd" in row
    # β = 0 leaves the rate out of the loss: the loss per point is distortion + weight · MMD²
    assert row["train_loss"] == pytest.approx(row["train_distortion"] + 50.0 * row["train_mmd"], rel=1e-4)
    code = cli.main(
        ["train", "--model", "beta-tcvae", "--epochs", "1", *TINY, "--tc-weight", "-3", "--out", str(tmp_path / "bad")]
    )
    assert code == 2 and "tc_weight" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["factorvae", "bibae"])
def test_resume_with_critics_equals_the_uninterrupted_run(name, tmp_path, capsys):
    flags = ["--model", name, *TINY, *TABLE[name][0]]
    run(["train", *flags, "--epochs", "2", "--out", str(tmp_path / "full")], capsys)
    run(["train", *flags, "--epochs", "1", "--out", str(tmp_path / "part")], capsys)
    run(["train", *flags, "--epochs", "2", "--resume", "--out", str(tmp_path / "part")], capsys)
    full = load_checkpoint(tmp_path / "full" / "checkpoint.pt")
    part = load_checkpoint(tmp_path / "part" / "checkpoint.pt")
    for key in ("model", "guide"):
        assert all(torch.equal(v, part[key][k]) for k, v in full[key].items()), key
    critics = full["objective"]["critics"]
    assert critics and set(critics) == set(part["objective"]["critics"])
    for critic, entry in critics.items():
        assert all(
            torch.equal(v, part["objective"]["critics"][critic]["weights"][k]) for k, v in entry["weights"].items()
        ), critic
    assert (
        read_jsonl(tmp_path / "full" / "metrics.jsonl")[-1]["val_elbo"]
        == read_jsonl(tmp_path / "part" / "metrics.jsonl")[-1]["val_elbo"]
    )
