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


def test_the_same_rate_comparison_interpolates_the_beta_vae_in_log_rate_and_never_extrapolates():
    import math

    import disentanglement

    curve = [(20.0, 0.1), (5.0, 0.3)]  # unsorted on purpose
    at_10 = 0.3 + (0.1 - 0.3) * (math.log(10) - math.log(5)) / (math.log(20) - math.log(5))
    assert disentanglement._beta_vae_at(10.0, curve) == pytest.approx(at_10)
    assert disentanglement._beta_vae_at(20.0, curve) == pytest.approx(0.1)
    assert disentanglement._beta_vae_at(21.0, curve) is None and disentanglement._beta_vae_at(4.9, curve) is None
    point = {"mig": 0.5, "dci_disentanglement": 0.4, "total_correlation": 1.0, "distortion": 60.0}
    results = {
        "β-VAE β=0.5": [{"seed": 0, "rate": 24.0, **point}],
        "β-VAE β=1": [{"seed": 0, "rate": 20.0, **point}],
        "β-VAE β=4": [{"seed": 0, "rate": 10.0, **point, "mig": 0.2}, {"seed": 1, "rate": 10.0, **point, "mig": 0.4}],
        "β-VAE β=16": [{"seed": 0, "rate": 5.0, **point, "mig": 0.1}],
        "β-TCVAE TC 4": [{"seed": 0, "rate": 10.0, **point, "mig": 0.6}, {"seed": 1, "rate": 5.0, **point}],
        "FactorVAE γ=10": [{"seed": 0, "rate": 25.0, **point}],
    }
    lines = disentanglement._same_rate_lines(results)
    rows = {
        line.split(" | ")[0][2:]: line.split(" | ") for line in lines if line.startswith("| ") and "|---" not in line
    }
    # the β = 4 point pools its two seeds (MIG 0.3); seed 1 at rate 5 meets the β = 16 point (MIG 0.1)
    assert rows["β-TCVAE TC 4"][1] == "2" and rows["β-TCVAE TC 4"][3] == f"{0.35:.3f} ± {math.sqrt(0.005):.3f}"
    assert rows["β-TCVAE TC 4"][-2] == f"{math.sqrt(0.02):.3f} (β=4)"  # the spread of the β-VAE's MIG at β = 4
    assert rows["FactorVAE γ=10"][1] == "0" and rows["FactorVAE γ=10"][-1] == "1 |"  # above β = 0.5's rate
    del results["β-VAE β=16"]
    assert "every β of the β-VAE needs a finished seed" in disentanglement._same_rate_lines(results)[-1]


def test_a_clustering_slice_trains_only_the_chosen_methods_and_still_reports_every_measured_unit(places, monkeypatch):
    import clustering

    trained = []

    def fake_unit(dataset, method, seed, epochs, out, units):
        name = clustering._unit_name(dataset, method, seed)
        if (done := units.get(name)) is not None:  # as the real one: a measured unit is read back, not trained
            return done
        trained.append((method, seed))
        return units.put(name, {k: 0.5 for k in clustering.SCORES})

    monkeypatch.setattr(clustering, "_unit", fake_unit)
    monkeypatch.setattr(clustering, "ROOT", places)
    store = harness.Units(argparse.Namespace(record=True), "clustering")
    store.put("digits-gmvae-s1", {"cluster_accuracy": 0.25, "nmi": 0.25, "ari": 0.25})
    argv = ["clustering.py", "--record", "--datasets", "digits", "--seeds", "2", "--workers", "1", "--methods", "hvae"]
    monkeypatch.setattr(sys, "argv", argv + ["--out", str(places / "runs")])
    clustering.main()
    assert sorted(trained) == [("hierarchical VAE (Gao et al. sizes)", 0), ("hierarchical VAE (Gao et al. sizes)", 1)]
    table = (places / "results" / "clustering.md").read_text()
    assert "| Gaussian-mixture VAE | 1 | 0.250 |" in table
    assert "| hierarchical VAE (Gao et al. sizes) | 2 | 0.500 ± 0.000 |" in table
    assert "| k-means on pixels | 0 |" in table
