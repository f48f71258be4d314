"""Data-parallel training with torchrun on two CPU processes (gloo): the same parameters as one process trained on
the concatenated batches, one run directory written by rank 0, and a resume with another number of processes."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from pyroib.checkpoint import load_checkpoint, read_jsonl

PROGRAM = Path(__file__).parent / "programs" / "deterministic_ae.py"
COMMON = ["--model", str(PROGRAM), "--dataset", "digits", "--binarize", "none", "--train-size", "320"]
COMMON += ["--device", "cpu", "--no-progress", "--seed", "3"]


def _pyroib(argv, processes=1):
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), "-m", "pyroib", *argv]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300, env={"OMP_NUM_THREADS": "1", **_env()})
    assert done.returncode == 0, done.stderr[-2000:]
    return done


def _env():
    import os

    return {k: v for k, v in os.environ.items() if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK")}


def _weights(run):
    state = load_checkpoint(run / "checkpoint.pt")
    return {f"{part}.{k}": v for part in ("model", "guide") for k, v in state[part].items()}


def test_two_processes_equal_one_process_on_the_concatenated_batches(tmp_path):
    _pyroib(["train", *COMMON, "--batch-size", "16", "--epochs", "2", "--out", str(tmp_path / "two")], processes=2)
    _pyroib(["train", *COMMON, "--batch-size", "32", "--epochs", "2", "--out", str(tmp_path / "one")])
    two, one = _weights(tmp_path / "two"), _weights(tmp_path / "one")
    assert set(two) == set(one)
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=1e-4, atol=1e-5, msg=name)
    # the logged means are over both processes' points: the same numbers as the one process's
    rows_two, rows_one = read_jsonl(tmp_path / "two" / "metrics.jsonl"), read_jsonl(tmp_path / "one" / "metrics.jsonl")
    assert len(rows_two) == 2 and [r["step"] for r in rows_two] == [r["step"] for r in rows_one] == [10, 20]
    for a, b in zip(rows_two, rows_one, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_elbo"] == pytest.approx(b["val_elbo"], rel=1e-4)
    assert json.loads((tmp_path / "two" / "config.json").read_text())["processes"] == 2


def test_a_two_process_run_resumes_in_one_process(tmp_path):
    run = tmp_path / "run"
    _pyroib(["train", *COMMON, "--batch-size", "16", "--epochs", "1", "--out", str(run)], processes=2)
    first = read_jsonl(run / "metrics.jsonl")
    before = _weights(run)
    done = _pyroib(["train", *COMMON, "--batch-size", "16", "--epochs", "2", "--out", str(run), "--resume"])
    rows = read_jsonl(run / "metrics.jsonl")
    assert rows[0] == first[0] and len(rows) == 2 and rows[1]["step"] == 10 + 20  # 320 points: 10 steps of 2 × 16
    assert json.loads((run / "config.json").read_text())["processes"] == 1
    after = _weights(run)
    assert any(not torch.equal(before[k], after[k]) for k in before)
    assert "trained" in done.stdout
