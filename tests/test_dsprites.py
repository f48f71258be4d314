"""dSprites regenerated: the official order, the sprites' geometry (sizes, areas, positions, rotation sense, the
heart's notch), and the packed, cached full set."""

import json
import math

import numpy as np
import pytest
import torch

from pyroib import dsprites
from pyroib.architectures import ARCHITECTURES
from pyroib.decoded_cache import cache_dir


def _one(shape, scale, orientation, x, y):
    return dsprites.render(np.array([[shape, scale, orientation, x, y]]))[0]


def _bounding_box(image):
    rows, cols = image.any(1).nonzero().flatten(), image.any(0).nonzero().flatten()
    return int(cols.max() - cols.min() + 1), int(rows.max() - rows.min() + 1)


def test_official_order_position_y_fastest():
    assert dsprites.IMAGES == 737_280
    corners = np.array([[0, 0, 0, 0, 1], [0, 0, 0, 1, 0], [0, 0, 1, 0, 0], [2, 5, 39, 31, 31]])
    assert dsprites.index_of(corners).tolist() == [1, 32, 1024, 737_279]
    index = np.random.default_rng(0).integers(0, dsprites.IMAGES, 500)
    assert (dsprites.index_of(dsprites.factors_of(index)) == index).all()


@pytest.mark.parametrize("scale", range(6))
def test_a_square_of_side_l_covers_l_squared_to_l_plus_one_squared_pixels(scale):
    side = 20 * dsprites.factor_values()[1][scale]
    for x, y in [(0, 0), (13, 7), (31, 20)]:
        count = int(_one(0, scale, 0, x, y).sum())
        assert round(side) ** 2 <= count <= (round(side) + 1) ** 2


def test_ellipse_area_axes_and_rotation_sense():
    for scale in (0, 5):
        s = dsprites.factor_values()[1][scale]
        image = _one(1, scale, 0, 16, 16)
        a, b = 12.9 * s, 7.2 * s
        # a pixel-centre count differs from the area by less than the perimeter
        assert abs(int(image.sum()) - math.pi * a * b) < 2 * math.pi * a
        width, height = _bounding_box(image)
        assert abs(width - 2 * a) <= 1.5 and abs(height - 2 * b) <= 1.5
    # at about 46 degrees counter-clockwise on screen the long axis rises to the right: columns grow as rows shrink
    rows, cols = _one(1, 5, 5, 16, 16).nonzero(as_tuple=True)
    assert np.corrcoef(cols.numpy(), rows.numpy())[0, 1] < -0.5
    # a quarter turn (10 of 39 steps of 2π, 92 degrees) swaps the axes
    width, height = _bounding_box(_one(1, 5, 10, 16, 16))
    assert abs(height - 2 * 12.9) <= 2 and abs(width - 2 * 7.2) <= 2


def test_heart_box_notch_up_and_tip_down():
    image = _one(2, 5, 0, 16, 16)
    assert _bounding_box(image) in {(20, 17), (21, 17), (20, 18), (21, 18)}
    rows = image.any(1).nonzero().flatten()
    top, bottom = image[rows.min()], image[rows.max()]
    # the top row meets two lobes (two runs of pixels); the bottom row is the tip
    runs = int((top[1:] & ~top[:-1]).sum() + top[0])
    assert runs == 2 and int(bottom.sum()) <= 3


def test_position_and_a_full_turn():
    values = dsprites.factor_values()
    for x, y in [(0, 0), (31, 31), (10, 25)]:
        rows, cols = _one(0, 5, 0, x, y).nonzero(as_tuple=True)
        # the pixel centres at column + 1/2 average to the sprite's centre 16 + 32 · position
        assert abs(float(cols.double().mean()) + 0.5 - (16 + 32 * values[3][x])) <= 0.5
        assert abs(float(rows.double().mean()) + 0.5 - (16 + 32 * values[4][y])) <= 0.5
    for shape in range(3):
        assert int((_one(shape, 3, 0, 12, 18) ^ _one(shape, 3, 39, 12, 18)).sum()) <= 2


def test_ground_truth_draws_and_renders():
    truth = dsprites.DSprites()
    factors = truth.sample_factors(20, np.random.default_rng(1))
    assert factors.shape == (20, 5) and (factors < np.array(dsprites.FACTOR_SIZES)).all()
    images = truth.observations(factors)
    assert images.shape == (20, 1, 64, 64) and images.dtype == torch.get_default_dtype()
    assert set(images.unique().tolist()) <= {0.0, 1.0}
    with pytest.raises(ValueError, match="out of range"):
        dsprites.render(np.array([[3, 0, 0, 0, 0]]))


def test_packed_set_is_the_rendered_images_and_is_cached_with_its_hash(monkeypatch):
    monkeypatch.setattr(dsprites, "IMAGES", 300)
    packed = dsprites.all_images()
    assert packed.shape == (300, 512)
    unpacked = np.unpackbits(packed, axis=1).reshape(300, 64, 64).astype(bool)
    np.testing.assert_array_equal(unpacked, dsprites.render(dsprites.factors_of(np.arange(300))).numpy())
    (meta,) = [json.loads(p.read_text()) for p in cache_dir().glob("dsprites-*.json")]
    assert meta["sha256"] == dsprites.content_sha256(packed)
    # a second call reads the cache instead of drawing again
    monkeypatch.setattr(dsprites, "render", None)
    np.testing.assert_array_equal(dsprites.all_images(), packed)


def _small_dsprites(monkeypatch, images=3000, test=500):
    from pyroib import data

    monkeypatch.setattr(dsprites, "IMAGES", images)
    monkeypatch.setattr(data, "DSPRITES_TEST_SIZE", test)


def test_dsprites_loads_as_bytes_and_reads_as_float(monkeypatch):
    from pyroib.data import BatchIterator, load_dataset

    _small_dsprites(monkeypatch)
    splits = load_dataset("dsprites", binarize="dynamic", val_size=300, train_size=1000)
    assert splits.train.dtype == torch.uint8 and splits.train.shape == (1000, 1, 64, 64)
    assert (splits.val.shape[0], splits.test.shape[0], splits.n_classes) == (300, 500, 3)
    test, labels = splits.split("test")
    assert test.dtype == torch.get_default_dtype() and set(test.unique().tolist()) <= {0.0, 1.0}
    assert labels.tolist() == [0] * 500  # the first 3,000 images of the official order are all squares
    x, _, index = next(iter(BatchIterator(splits, 64, torch.Generator().manual_seed(0))))
    # binary images are not resampled by dynamic binarisation: the batch is the stored images, as float
    assert x.dtype == torch.get_default_dtype() and torch.equal(x, splits.train[index].float())


def test_each_split_image_is_the_sprite_of_its_official_index(monkeypatch):
    from pyroib.data import load_dataset

    _small_dsprites(monkeypatch)
    splits = load_dataset("dsprites", val_size=300, train_size=1000)
    for split in ("train", "val", "test"):
        factors = dsprites.factors_of(splits.source_index[split].numpy())
        assert torch.equal(dsprites.render(factors)[:, None].to(torch.uint8), getattr(splits, split)), split


def test_a_vae_trains_on_dsprites_from_the_command_line(monkeypatch, tmp_path, capsys):
    from pyroib.cli import main

    _small_dsprites(monkeypatch)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "dsprites", "--train-size", "256", "--val-size", "100", "--epochs", "1"]
    argv += ["--hidden", "32", "--latent-dim", "4", "--batch-size", "64", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--out", str(run)]) == 0, capsys.readouterr().err
    capsys.readouterr()
    evaluate = ["evaluate", str(run), "--json", "--device", "cpu", "--iw-samples", "2", "--full-data-points", "100"]
    assert main(evaluate) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == 500 and math.isfinite(result["elbo"])


def _tiny_dsprites_run(monkeypatch, tmp_path, device="cpu", network=("--hidden", "16")):
    from pyroib.cli import main

    _small_dsprites(monkeypatch)
    run = tmp_path / "run"
    argv = ["train", "--dataset", "dsprites", "--train-size", "128", "--val-size", "64", "--epochs", "1"]
    argv += [*network, "--latent-dim", "3", "--batch-size", "64", "--device", device, "--no-progress"]
    assert main([*argv, "--out", str(run)]) == 0
    return run


def test_evaluate_disentanglement_on_a_dsprites_run_and_its_refusal_elsewhere(monkeypatch, tmp_path, capsys):
    from pyroib.cli import main
    from pyroib.disentanglement import DISENTANGLEMENT_KEYS

    run = _tiny_dsprites_run(monkeypatch, tmp_path)
    capsys.readouterr()
    evaluate = ["evaluate", str(run), "--json", "--device", "cpu", "--iw-samples", "0", "--full-data-points", "0"]
    assert main([*evaluate, "--disentanglement", "--disentanglement-scale", "0.003"]) == 0
    result = json.loads(capsys.readouterr().out)
    for key in DISENTANGLEMENT_KEYS:
        assert 0.0 <= result[key] <= 1.0, key
    assert result["disentanglement_codes"] == "means"
    information, entropy = np.array(result["factor_information"]), np.array(result["factor_entropy"])
    assert information.shape == (3, 5)  # codes x factors: the matrix the MIG is the normalised top-two gap of
    ordered = np.sort(information, axis=0)
    assert np.mean((ordered[-1] - ordered[-2]) / entropy) == pytest.approx(result["mig"])
    digits = tmp_path / "digits"
    argv = ["train", "--dataset", "digits", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(digits)]
    assert main(argv) == 0
    capsys.readouterr()
    assert main(["evaluate", str(digits), "--disentanglement", "--device", "cpu"]) == 2
    assert "needs a data set with ground-truth factors (dsprites)" in capsys.readouterr().err


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA"))]


@pytest.mark.parametrize("device", DEVICES)
def test_report_of_a_dsprites_run_has_the_metrics_heat_map_and_traversals(device, monkeypatch, tmp_path, capsys):
    from pyroib.cli import main

    # the Burgess et al. networks on the CPU run (the rest of this file uses small MLPs); rendered images are CPU
    # tensors that a CUDA run's encoder must receive on its device
    network = ("--network", "burgess") if device == "cpu" else ("--hidden", "16")
    run = _tiny_dsprites_run(monkeypatch, tmp_path, device, network)
    report = ["report", str(run), "--device", device, "--iw-samples", "2", "--disentanglement-scale", "0.003"]
    assert main(report) == 0, capsys.readouterr().err
    text = (run / "report" / "report.md").read_text()
    assert "| mig |" in text and "| dci_disentanglement |" in text
    for figure in ("factor_information.png", "factor_traversals.png"):
        assert f"({figure})" in text and (run / "report" / figure).stat().st_size > 0


SMALL_FLAGS = {
    "hvae": ["--layer-sizes", "4,10", "--layer-types", "gaussian,categorical"],
    "gmvae": ["--layer-sizes", "4,10", "--hidden", "16"],
    "vqvae": ["--positions", "4", "--codebook-size", "16", "--hidden", "16"],
    "generative-codec": ["--positions", "4", "--codebook-size", "16", "--hidden", "16"],
    "diffusion": ["--channels", "4,8,8", "--timesteps", "20"],
}


@pytest.mark.parametrize("model", list(ARCHITECTURES))
def test_every_architecture_trains_on_dsprites_from_the_command_line(model, monkeypatch, tmp_path, capsys):
    from pyroib.cli import main

    _small_dsprites(monkeypatch)
    argv = ["train", "--model", model, "--dataset", "dsprites", "--train-size", "128", "--val-size", "64"]
    argv += ["--epochs", "1", "--batch-size", "64", "--device", "cpu", "--no-progress", "--out", str(tmp_path / "r")]
    argv += SMALL_FLAGS.get(model, ["--hidden", "16", "--latent-dim", "3"])
    assert main(argv) == 0, capsys.readouterr().err
    (row,) = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert math.isfinite(row["val_elbo"] if "val_elbo" in row else row["val_loss"]), row
