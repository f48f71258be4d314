"""β sweeps: the β grammar, a sweep end to end (table, plot, rate ordering), failures kept apart, resuming,
worker processes."""

import csv

import pytest

from pyroib.cli import main
from pyroib.cli.train import spec_from_args
from pyroib.run import RunSpec
from pyroib.sweep import parse_betas, run_name, run_sweep

TINY = [
    "--dataset",
    "digits",
    "--epochs",
    "2",
    "--hidden",
    "32",
    "--latent-dim",
    "4",
    "--lr",
    "0.01",
    "--device",
    "cpu",
    "--no-progress",
]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _table(path):
    with open(path / "sweep.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_linear_and_log_spacing():
    assert parse_betas("0.5:4:3") == pytest.approx([0.5, 2.25, 4.0])
    assert parse_betas("0:1:5:lin") == pytest.approx([0.0, 0.25, 0.5, 0.75, 1.0])
    assert parse_betas("1e-4:1e-1:4:log") == pytest.approx([1e-4, 1e-3, 1e-2, 1e-1], rel=1e-12)
    assert parse_betas("2:8:1") == [2.0]
    assert parse_betas("4:1:2") == [4.0, 1.0]


@pytest.mark.parametrize(
    "spec, message",
    [
        ("0.5:4", "START:STOP:COUNT"),
        ("0.5:4:3:cubic", "START:STOP:COUNT"),
        ("a:4:3", "numbers"),
        ("0.5:4:2.5", "integer"),
        ("0.5:4:0", "at least 1"),
        ("-1:4:3", ">= 0"),
        ("0:1:3:log", "START > 0"),
        ("1e-3:nan:3", "finite"),
    ],
)
def test_bad_beta_specs_raise(spec, message):
    with pytest.raises(ValueError, match=message):
        parse_betas(spec)


def test_run_names_must_differ():
    assert run_name(0.001) == "beta-0.001"
    with pytest.raises(ValueError, match="coincide"):
        run_sweep(RunSpec(model="vae"), [1.0, 1.0 + 1e-9], "unused")


def test_vae_sweep_writes_table_and_plot_and_rate_falls_with_beta(tmp_path, capsys):
    out = tmp_path / "sweep"
    argv = ["sweep", "--model", "vae", "--beta", "0.1:4:2", *TINY, "--out", str(out)]
    assert main(argv) == 0
    rows = _table(out)
    assert [float(r["beta"]) for r in rows] == [0.1, 4.0]
    assert all(r["status"] == "trained" for r in rows)
    assert float(rows[0]["rate"]) > float(rows[1]["rate"])  # β = 4 squeezes the code harder than β = 0.1
    assert (out / "sweep.png").read_bytes()[:8] == PNG_MAGIC
    assert "| beta | status |" in (out / "sweep.md").read_text()
    for r in rows:
        assert (out / r["run"] / "checkpoint.pt").is_file()

    # a rerun skips finished runs and leaves them untouched; a broken run is reported and the others still run
    before = (out / "beta-0.1" / "metrics.jsonl").read_bytes()
    broken = out / run_name(2.05)
    broken.mkdir()
    (broken / "metrics.jsonl").write_text("{}\n")  # a log without a checkpoint: train refuses to overwrite it
    capsys.readouterr()
    assert main(["sweep", "--model", "vae", "--beta", "0.1:4:3", *TINY, "--out", str(out)]) == 2
    assert "1 of 3 runs failed" in capsys.readouterr().err
    rows = {float(r["beta"]): r for r in _table(out)}
    assert rows[0.1]["status"].startswith("skipped") and rows[4.0]["status"].startswith("skipped")
    assert rows[2.05]["status"].startswith("failed: FileExistsError")
    assert (out / "beta-0.1" / "metrics.jsonl").read_bytes() == before


def test_sweep_refuses_flags_it_owns(tmp_path, capsys):
    assert main(["sweep", "--model", "vae", "--beta", "1:2:2", "--resume", "--out", str(tmp_path)]) == 2
    assert "--resume" in capsys.readouterr().err
    assert main(["sweep", "--model", "vae", "--beta", "1:2:2", "--workers", "0", "--out", str(tmp_path)]) == 2
    with pytest.raises(TypeError, match="RunSpec"):
        run_sweep(["--model", "vae"], [1.0], tmp_path)


def test_vib_sweep_in_worker_processes_fills_the_information_plane(tmp_path):
    """Two spawned workers; a smaller β buys more information about x and (here) about y."""
    spec, _ = spec_from_args(["--model", "vib", "--binarize", "none", *TINY])
    rows = run_sweep(spec, [1e-3, 1.0], tmp_path, workers=2)
    assert [r["status"] for r in rows] == ["trained", "trained"]
    small, large = rows
    assert small["i_xz_upper"] > large["i_xz_upper"]
    assert small["i_zy_lower"] > large["i_zy_lower"]
    for r in rows:
        assert r["i_zy_lower"] <= r["h_y"] and r["i_xz_upper"] >= 0 and 0 <= r["accuracy"] <= 1
    assert {"accuracy", "i_xz_upper", "i_zy_lower"} <= set(_table(tmp_path)[0])
    assert all("nll_iw" not in r for r in rows)  # deep VIB does not model x: no -log p(x), as in pyroib evaluate
    assert (tmp_path / "sweep.png").read_bytes()[:8] == PNG_MAGIC
