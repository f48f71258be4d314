"""Fault injection: processes killed (SIGKILL) at random moments and in the middle of file writes, then resumed; edited
checkpoints. Whatever a kill leaves behind must load, nothing visible may be half-written, and a resumed run must end
bit for bit where the uninterrupted one does (CPU, fixed seed)."""

import csv
import json
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import torch

from pyroib.checkpoint import load_checkpoint, read_jsonl
from pyroib.cli import main
from pyroib.run import read_spec

TRAIN = ["train", "--model", "vae", "--dataset", "digits", "--latent-dim", "2", "--hidden", "16", "--batch-size", "64"]
TRAIN += ["--seed", "5", "--device", "cpu", "--no-progress"]
EPOCHS = 60
PNG = b"\x89PNG\r\n\x1a\n"

# run the CLI in a child process; with KILL_ON_WRITE=k it writes half of its k-th atomic file and kills itself there
CHILD = """
import io, os, signal, sys
from pathlib import Path
import pyroib.checkpoint as checkpoint
from pyroib.cli import main
kill_on_write = int(os.environ.get("KILL_ON_WRITE", "0"))
original, calls = checkpoint.atomic_write_bytes, [0]
def faulty(path, write):
    calls[0] += 1
    if calls[0] == kill_on_write:
        buffer = io.BytesIO()
        write(buffer)
        data = buffer.getvalue()
        tmp = Path(path).with_name(f".{Path(path).name}.tmp-{os.getpid()}")
        with open(tmp, "wb") as f:
            f.write(data[: len(data) // 2])
            f.flush()
        os.kill(os.getpid(), signal.SIGKILL)
    return original(path, write)
checkpoint.atomic_write_bytes = faulty
sys.exit(main(sys.argv[1:]))
"""


def run_child(argv, cwd, *, kill_when=None, delay=0.0, kill_on_write=0) -> str:
    """'finished', 'failed: ...', or 'killed': by SIGKILL ``delay`` seconds after ``kill_when()`` first holds (polled
    every 10 ms, so kills land at points of the run's progress, whatever the machine's speed), or by the injected
    write fault."""
    env = {"KILL_ON_WRITE": str(kill_on_write), "PATH": "/usr/bin:/bin", "MPLBACKEND": "Agg", "HOME": str(cwd)}
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(
            [sys.executable, "-c", CHILD, *argv], cwd=cwd, env=env, stdout=subprocess.DEVNULL, stderr=err
        )
        while kill_when is not None and proc.poll() is None and not kill_when():
            time.sleep(0.01)
        if kill_when is not None and proc.poll() is None:
            time.sleep(delay)
            proc.kill()
        proc.wait()
        err.seek(0)
        message = err.read().decode().strip()[-300:]
    if proc.returncode == -9:
        return "killed"
    return "finished" if proc.returncode == 0 else f"failed: {message}"


def reached_epoch(run: Path, epoch: int):
    return lambda: bool(read_jsonl(run / "metrics.jsonl")) and read_jsonl(run / "metrics.jsonl")[-1]["epoch"] >= epoch


def assert_whole(run: Path) -> None:
    """Every visible file a kill left behind reads back completely."""
    if (run / "config.json").exists():
        read_spec(run)
    for name in ("checkpoint.pt", "best.pt", "aggregate_prior.pt"):
        if (run / name).exists():
            load_checkpoint(run / name)
    if (run / "metrics.jsonl").exists():
        rows = read_jsonl(run / "metrics.jsonl")
        assert [r["epoch"] for r in rows] == list(range(1, len(rows) + 1))


def weights(run: Path) -> dict:
    state = load_checkpoint(run / "checkpoint.pt")
    return {f"{part}.{k}": v for part in ("model", "guide") for k, v in state[part].items()}


def metric_rows(run: Path) -> list[dict]:
    timings = ("seconds", "train_seconds")
    return [{k: v for k, v in r.items() if k not in timings} for r in read_jsonl(run / "metrics.jsonl")]


def test_training_killed_at_random_moments_and_mid_write_resumes_to_the_uninterrupted_run(tmp_path):
    argv = [*TRAIN, "--epochs", str(EPOCHS)]
    assert run_child([*argv, "--out", "full"], tmp_path) == "finished"
    rng = random.Random(1)
    run = tmp_path / "part"
    # timed kills land anywhere (start-up, a step, validation, a checkpoint write); write faults land in a write
    # write faults (each stops the run within its first three epochs) and kills within a random epoch a few epochs
    # on: together they reach at most 4 * 3 + 6 * 7 < EPOCHS epochs, so every fault interrupts the run
    faults = [("write", rng.randint(1, 6)) for _ in range(4)] + [("epoch", rng.randint(1, 6)) for _ in range(6)]
    rng.shuffle(faults)
    outcomes = []
    for kind, value in faults:
        resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
        done = read_jsonl(run / "metrics.jsonl")[-1]["epoch"] if read_jsonl(run / "metrics.jsonl") else 0
        outcome = run_child(
            [*argv, "--out", "part", *resume],
            tmp_path,
            kill_when=reached_epoch(run, done + value) if kind == "epoch" else None,
            delay=rng.uniform(0.0, 0.1),
            kill_on_write=value if kind == "write" else 0,
        )
        assert outcome in ("killed", "finished"), outcome
        outcomes.append(outcome)
        assert_whole(run)
        if outcome == "finished":
            break
    resume = ["--resume"] if (run / "checkpoint.pt").exists() else []
    assert run_child([*argv, "--out", "part", *resume], tmp_path) == "finished"
    assert outcomes.count("killed") == len(faults)  # every fault interrupted it
    full, part = weights(tmp_path / "full"), weights(run)
    assert all(torch.equal(full[k], part[k]) for k in full)
    assert metric_rows(run) == metric_rows(tmp_path / "full")
    assert not list(run.glob(".*.tmp-*"))  # the next start removed what the killed writers left


def test_a_killed_sweep_continues_and_never_retrains_a_finished_point(tmp_path):
    argv = ["sweep", "--model", "vae", "--dataset", "digits", "--beta", "0.5:2:3", "--epochs", "20"]
    argv += ["--latent-dim", "2", "--hidden", "16", "--device", "cpu", "--no-progress", "--out", "sweep"]
    rng = random.Random(2)
    finished_rows, outcomes = {}, []
    for _ in range(5):
        # a kill in the k-th file write of each attempt: each gets part of the way (a run writes ~2 files an epoch)
        outcomes.append(run_child(argv, tmp_path, kill_on_write=rng.randint(15, 50)))
        for run in (tmp_path / "sweep").glob("beta-*"):
            assert_whole(run)
            rows = read_jsonl(run / "metrics.jsonl")
            if rows and rows[-1]["epoch"] == 20:  # finished: later sweeps must leave it as it is
                finished_rows.setdefault(run.name, metric_rows(run))
        if outcomes[-1] == "finished":
            break
    if outcomes[-1] != "finished":
        assert run_child(argv, tmp_path) == "finished"
    assert outcomes.count("killed") >= 2 and finished_rows  # kills landed, some after a point had finished
    for name, rows in finished_rows.items():
        assert metric_rows(tmp_path / "sweep" / name) == rows
    with open(tmp_path / "sweep" / "sweep.csv") as f:
        table = list(csv.DictReader(f))
    assert [float(r["beta"]) for r in table] == [0.5, 1.25, 2.0]
    assert not any(r["status"].startswith("failed") for r in table)


def test_a_killed_report_or_fit_prior_leaves_no_half_written_output(tmp_path):
    assert main([*TRAIN, "--epochs", "2", "--out", str(tmp_path / "run")]) == 0
    run, rng, outcomes = tmp_path / "run", random.Random(3), []
    report_command = ["report", "run", "--device", "cpu", "--iw-samples", "20"]
    for _ in range(3):  # killed while the new report is being written, a random moment after it started
        building = lambda: any(run.glob(".report.tmp-*"))  # noqa: E731
        outcomes.append(run_child(report_command, tmp_path, kill_when=building, delay=rng.uniform(0.0, 1.0)))
        assert_report_whole(run)
    outcomes.append(run_child(["fit-prior", "run", "--device", "cpu"], tmp_path, kill_on_write=1))  # mid-write
    assert_whole(run)
    assert "killed" in outcomes[:3] and outcomes[3] == "killed"
    assert run_child(report_command, tmp_path) == "finished"
    assert run_child(["fit-prior", "run", "--device", "cpu"], tmp_path) == "finished"
    assert_report_whole(run)
    assert_whole(run)
    assert (run / "report" / "report.md").exists() and (run / "aggregate_prior.pt").exists()
    assert not [p.name for p in run.iterdir() if ".tmp-" in p.name or ".old-" in p.name]


def assert_report_whole(run: Path) -> None:
    """All of a report or none of it: every figure report.md shows is a whole PNG, the evaluation JSON parses."""
    report = run / "report"
    if not report.exists():
        return
    text = (report / "report.md").read_text()
    for image in [line.split("(")[-1].rstrip(")") for line in text.splitlines() if line.startswith("![")]:
        assert (report / image).read_bytes()[:8] == PNG
    json.loads((report / "evaluation.json").read_text())


class NotATensor:
    pass


@pytest.mark.parametrize(
    "tamper, message",
    [
        (lambda s: s["model"].update({k: v[:-1] for k, v in list(s["model"].items())[:1]}), "does not fit this run"),
        (lambda s: s.pop("guide"), "does not fit this run"),
        (lambda s: s["model"].update({next(iter(s["model"])): NotATensor()}), "cannot read checkpoint"),
    ],
    ids=["shape", "missing-part", "pickled-object"],
)
def test_an_edited_checkpoint_is_refused_in_one_line(tmp_path, capsys, tamper, message):
    assert main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    path = tmp_path / "run" / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    tamper(state)
    torch.save(state, path)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--device", "cpu", "--iw-samples", "2"]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert main([*TRAIN, "--epochs", "2", "--resume", "--out", str(tmp_path / "run")]) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("epochs", "ten", "field epochs is 'ten'"),
        ("model_config", [1, 2], "field model_config"),
        ("beta", None, "beta"),
    ],
)
def test_a_config_json_with_a_wrong_type_names_the_file_and_field(tmp_path, capsys, field, value, message):
    assert main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    config[field] = value
    (tmp_path / "run" / "config.json").write_text(json.dumps(config))
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path / "run"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "config.json" in err and message in err and len(err.strip().splitlines()) == 1


def test_sampling_into_a_missing_folder_is_refused(tmp_path, capsys):
    assert main([*TRAIN, "--epochs", "1", "--out", str(tmp_path / "run")]) == 0
    assert main(["sample", str(tmp_path / "run"), "--out", str(tmp_path / "no" / "s.png"), "--device", "cpu"]) == 2
    assert "does not exist; create it first" in capsys.readouterr().err


def test_a_folder_replaced_whole_survives_errors_and_a_kill_between_its_renames(tmp_path):
    from pyroib.checkpoint import atomic_directory

    report = tmp_path / "report"
    report.mkdir()
    (report / "a.txt").write_text("old")
    with pytest.raises(RuntimeError), atomic_directory(report) as tmp:
        (tmp / "a.txt").write_text("half")
        raise RuntimeError("the report failed")
    assert (report / "a.txt").read_text() == "old" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]
    # a writer killed between moving the old folder aside and moving the new one in (pid 2**22 + 1 runs nowhere)
    report.rename(tmp_path / f".report.old-{2**22 + 1}")
    (tmp_path / f".report.tmp-{2**22 + 1}").mkdir()
    with atomic_directory(report) as tmp:
        assert (report / "a.txt").read_text() == "old"  # restored before the new one is written
        (tmp / "a.txt").write_text("new")
    assert (report / "a.txt").read_text() == "new" and sorted(p.name for p in tmp_path.iterdir()) == ["report"]
