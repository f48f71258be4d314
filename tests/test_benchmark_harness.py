"""The benchmark harness keeps what a later session needs: finished units where the next checkout finds them, and the
notes written by hand under a results file when the script rewrites it."""

import argparse
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
import harness  # noqa: E402


@pytest.fixture
def places(tmp_path, monkeypatch):
    monkeypatch.setattr(harness, "RESULTS", tmp_path / "results")
    monkeypatch.setattr(harness, "WORK", tmp_path / "work")
    return tmp_path


def test_recorded_units_live_beside_the_recorded_results_and_others_in_the_work_directory(places):
    recorded = harness.Units(argparse.Namespace(record=True), "codecs")
    trial = harness.Units(argparse.Namespace(record=None), "codecs")
    recorded.put("vq-e20-s0", {"mse": 0.01, "bits": 126.1})
    assert recorded.path("vq-e20-s0").parent == places / "results" / "units" / "codecs"
    assert recorded.get("vq-e20-s0") == {"mse": 0.01, "bits": 126.1}
    assert not trial.done("vq-e20-s0") and trial.get("vq-e20-s0") is None
    trial.put("vq-e20-s0", {"mse": 0.5})
    assert recorded.get("vq-e20-s0") == {"mse": 0.01, "bits": 126.1}
    assert not list((places / "results" / "units" / "codecs").glob("*.tmp"))


def test_rewriting_a_results_file_keeps_the_notes_written_under_the_mark(places, capsys):
    args = argparse.Namespace(record=True)
    path = harness.write_results(args, "bench.md", "# Table\n\n| a |\n| 1 |\n")
    path.write_text(path.read_text() + f"\n{harness.NOTES_MARK}\n\n## Slice 1\n\n- ran 20 epochs\n")
    harness.write_results(args, "bench.md", "# Table\n\n| a |\n| 2 |\n")
    text = path.read_text()
    assert "| 2 |" in text and "| 1 |" not in text
    assert text.count(harness.NOTES_MARK) == 1 and text.endswith("## Slice 1\n\n- ran 20 epochs\n")
    harness.write_results(args, "bench.md", "# Table\n\n| a |\n| 3 |\n")
    assert path.read_text().count("ran 20 epochs") == 1


def test_a_results_file_without_notes_is_replaced_whole(places, capsys):
    args = argparse.Namespace(record=True)
    path = harness.write_results(args, "bench.md", "first\n")
    harness.write_results(args, "bench.md", "second\n")
    assert path.read_text() == "second\n"
