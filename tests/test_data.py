"""Tests of pyroib.data: splits, binarisation, minibatches, the idx reader and its errors."""

import gzip
import struct

import numpy as np
import pytest
import torch

from pyroib import data
from pyroib.data import BatchIterator, DataError, DataSplits, dataset_names, load_dataset, read_idx

SIDE = 28
N_TINY_TRAIN, N_TINY_TEST = 40, 10


def write_idx(path, array, magic=None):
    """An idx file written from the format's definition: big-endian magic, sizes, then the bytes."""
    array = np.asarray(array, dtype=np.uint8)
    magic = 0x0800 | array.ndim if magic is None else magic
    header = struct.pack(">I", magic) + struct.pack(f">{array.ndim}I", *array.shape)
    with gzip.open(path, "wb") as stream:
        stream.write(header + array.tobytes())


@pytest.fixture
def tiny_fashion(tmp_path):
    """Four idx files in Fashion-MNIST's layout; image i is uniformly grey at level i + 1 (of 255)."""
    levels = np.arange(1, N_TINY_TRAIN + N_TINY_TEST + 1)
    images = np.broadcast_to(levels[:, None, None], (len(levels), SIDE, SIDE))
    labels = (levels - 1) % 10
    names = data.FASHION_MNIST_FILES
    write_idx(tmp_path / names["train_images"], images[:N_TINY_TRAIN])
    write_idx(tmp_path / names["train_labels"], labels[:N_TINY_TRAIN])
    write_idx(tmp_path / names["test_images"], images[N_TINY_TRAIN:])
    write_idx(tmp_path / names["test_labels"], labels[N_TINY_TRAIN:])
    return tmp_path


def load_small(name, tiny_dir, **kwargs):
    if name == "fashion-mnist":
        kwargs = {"data_dir": tiny_dir, "val_size": 8, **kwargs}
    return load_dataset(name, **kwargs)


def grey_levels(x):
    return torch.round(x[:, 0, 0, 0] * 255).long()


@pytest.mark.parametrize("binarize", ["none", "static", "dynamic"])
@pytest.mark.parametrize("name", ["synthetic", "digits", "fashion-mnist"])
def test_splits_have_documented_shapes_dtypes_and_values(name, binarize, tiny_fashion):
    splits = load_small(name, tiny_fashion, binarize=binarize)
    assert isinstance(splits, DataSplits) and splits.binarize == binarize
    side = SIDE if name == "fashion-mnist" else 8
    assert splits.data_shape == (1, side, side)
    for split in ("train", "val", "test"):
        x, y = splits.split(split)
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.shape[0] == y.shape[0] and x.shape[1:] == (1, side, side)
        assert 0.0 <= x.min() and x.max() <= 1.0
        assert 0 <= y.min() and y.max() < splits.n_classes
        binary = bool(((x == 0) | (x == 1)).all())
        assert binary == (binarize == "static" or (binarize == "dynamic" and split != "train"))


@pytest.mark.parametrize("name, sizes", [("synthetic", (900, 100, 200)), ("digits", (1293, 144, 360))])
def test_split_sizes(name, sizes):
    splits = load_dataset(name, binarize="none")
    assert tuple(len(splits.split(s)[1]) for s in ("train", "val", "test")) == sizes
    resized = load_dataset(name, binarize="none", val_size=50)
    assert len(resized.val) == 50 and len(resized.train) == sizes[0] + sizes[1] - 50


def test_digits_partition_keeps_every_image_and_the_class_balance():
    from sklearn.datasets import load_digits

    splits = load_dataset("digits", binarize="none", seed=3)
    labels = torch.cat([splits.train_labels, splits.val_labels, splits.test_labels])
    assert torch.equal(labels.bincount(), torch.from_numpy(load_digits().target).bincount())
    sixteenths = splits.train * 16  # load_digits counts 0..16 set pixels per 4x4 block
    assert torch.equal(sixteenths, sixteenths.round()) and sixteenths.max() == 16
    test_share = splits.test_labels.bincount() / torch.from_numpy(load_digits().target).bincount()
    assert torch.allclose(test_share, torch.full_like(test_share, 0.2), atol=0.01)  # stratified


def test_fashion_idx_files_are_decoded_scaled_and_carved_without_loss(tiny_fashion):
    splits = load_dataset("fashion-mnist", data_dir=tiny_fashion, binarize="none", val_size=8, seed=1)
    pool = torch.cat([grey_levels(splits.train), grey_levels(splits.val)])
    assert torch.equal(pool.sort().values, torch.arange(1, N_TINY_TRAIN + 1))
    assert torch.equal(grey_levels(splits.test), torch.arange(N_TINY_TRAIN + 1, N_TINY_TRAIN + N_TINY_TEST + 1))
    assert torch.equal(splits.train_labels, (grey_levels(splits.train) - 1) % 10)
    assert torch.equal(splits.val_labels, (grey_levels(splits.val) - 1) % 10)
    assert torch.all(splits.train == splits.train[:, :, :1, :1])  # uniform images survive the reshape
    other_seed = load_dataset("fashion-mnist", data_dir=tiny_fashion, binarize="none", val_size=8, seed=2)
    assert not torch.equal(grey_levels(other_seed.val), grey_levels(splits.val))


def test_synthetic_images_follow_their_generative_story():
    images, factors, labels = data.make_synthetic(300, seed=0)
    orientation, position, thickness = factors.unbind(1)
    width = 1 + 2 * thickness
    # every line across the bar holds exactly the bar's width in intensity
    line_sums = torch.where(orientation[:, None] > 0, images[:, 0].sum(1), images[:, 0].sum(2))
    assert torch.allclose(line_sums, width[:, None].expand_as(line_sums), atol=1e-5)
    # perpendicular to the bar, the image is constant
    along = torch.where(orientation[:, None, None] > 0, images[:, 0].transpose(1, 2), images[:, 0])
    assert torch.equal(along, along[:, :1, :].expand_as(along))
    # coverage by midpoint-rule sampling of 1,000 points per pixel, against the closed-form overlap
    points = (torch.arange(8 * 1000) + 0.5) / 1000
    centre = 1.5 + 5 * position[:, None]
    inside = ((points - centre).abs() <= width[:, None] / 2).float()
    assert torch.allclose(along[:, 0], inside.view(-1, 8, 1000).mean(2), atol=2e-3)
    assert torch.equal(labels, (4 * position).long())
    assert 0.3 < orientation.mean() < 0.7


@pytest.mark.parametrize("name", ["synthetic", "digits"])
def test_same_seed_same_splits_other_seed_other_splits(name):
    first, again = (load_dataset(name, binarize="static", seed=5) for _ in range(2))
    other = load_dataset(name, binarize="static", seed=6)
    for split in ("train", "val", "test"):
        assert torch.equal(first.split(split)[0], again.split(split)[0])
        assert torch.equal(first.split(split)[1], again.split(split)[1])
    assert not torch.equal(first.val, other.val)


def test_val_size_does_not_change_the_test_binarisation():
    a = load_dataset("synthetic", binarize="dynamic", val_size=50, seed=0)
    b = load_dataset("synthetic", binarize="dynamic", val_size=200, seed=0)
    assert torch.equal(a.test, b.test)


def test_binarised_images_average_to_their_grey_levels():
    grey = load_dataset("digits", binarize="none", seed=0)
    static = load_dataset("digits", binarize="static", seed=0)
    assert torch.equal(grey.train_labels, static.train_labels)
    # Bernoulli(p) per pixel: the mean over ~83k pixels is within a few standard errors of mean p
    difference = (static.train - grey.train).mean()
    assert abs(difference) < 4 * 0.5 / grey.train.numel() ** 0.5
    assert torch.all(static.train[grey.train == 0] == 0) and torch.all(static.train[grey.train == 1] == 1)


def epoch(iterator):
    return [tuple(t.clone() for t in batch) for batch in iterator]


@pytest.mark.parametrize("batch_size, drop_last, n_batches", [(64, False, 15), (64, True, 14), (900, False, 1)])
def test_batches_cover_every_train_index_once_and_match_the_data(batch_size, drop_last, n_batches):
    splits = load_dataset("synthetic", binarize="none")
    iterator = BatchIterator(splits, batch_size, torch.Generator().manual_seed(0), drop_last=drop_last)
    batches = epoch(iterator)
    assert len(batches) == len(iterator) == n_batches
    index = torch.cat([i for _, _, i in batches])
    expected = len(splits.train) - (len(splits.train) % batch_size if drop_last else 0)
    assert len(index) == expected and len(index.unique()) == expected
    if not drop_last:
        assert torch.equal(index.sort().values, torch.arange(len(splits.train)))
    for x, y, i in batches:
        assert i.dtype == torch.int64 and i.device == splits.train.device
        assert torch.equal(x, splits.train[i]) and torch.equal(y, splits.train_labels[i])
    assert not torch.equal(index[:100], torch.arange(100))  # shuffled


def test_dynamic_binarisation_resamples_each_pass_and_static_does_not():
    for binarize, resampled in (("dynamic", True), ("static", False)):
        splits = load_dataset("synthetic", binarize=binarize)
        generator = torch.Generator().manual_seed(0)
        iterator = BatchIterator(splits, 100, generator)
        state = generator.get_state()
        first = epoch(iterator)
        generator.set_state(state)  # same order, so only the binarisation can differ
        second = epoch(iterator)
        xs = [torch.cat([b[0] for b in run]) for run in (first, second)]
        assert torch.equal(torch.cat([b[2] for b in first]), torch.cat([b[2] for b in second]))
        assert bool(((xs[0] == 0) | (xs[0] == 1)).all())
        assert (not torch.equal(xs[0], xs[1])) == resampled
        grey = splits.train[torch.cat([b[2] for b in first])]
        assert torch.all(xs[0][grey == 0] == 0) and torch.all(xs[0][grey == 1] == 1)


def test_restoring_generator_and_global_rng_replays_the_batches():
    splits = load_dataset("synthetic", binarize="dynamic")
    generator = torch.Generator().manual_seed(7)
    iterator = BatchIterator(splits, 128, generator)
    epoch(iterator)
    checkpoint = generator.get_state(), torch.get_rng_state()
    reference = epoch(iterator)
    torch.manual_seed(1234)
    epoch(BatchIterator(splits, 128, torch.Generator().manual_seed(99)))
    resumed_generator = torch.Generator()
    resumed_generator.set_state(checkpoint[0])
    torch.set_rng_state(checkpoint[1])
    replay = epoch(BatchIterator(splits, 128, resumed_generator))
    assert len(replay) == len(reference)
    for got, want in zip(replay, reference):
        assert all(torch.equal(g, w) for g, w in zip(got, want))


@pytest.mark.parametrize("batch_size", [0, -3, 901])
def test_batch_size_out_of_range_raises(batch_size):
    splits = load_dataset("synthetic", binarize="none")
    with pytest.raises(ValueError, match="batch_size"):
        BatchIterator(splits, batch_size, torch.Generator())


def test_batch_iterator_rejects_bad_arguments():
    splits = load_dataset("synthetic", binarize="none")
    with pytest.raises(TypeError, match="generator"):
        BatchIterator(splits, 10, 0)
    with pytest.raises(TypeError, match="batch_size"):
        BatchIterator(splits, 10.5, torch.Generator())


def test_idx_round_trip(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, size=(3, 5, 7), dtype=np.uint8)
    labels = np.array([9, 0, 4], dtype=np.uint8)
    write_idx(tmp_path / "images.gz", images)
    write_idx(tmp_path / "labels.gz", labels)
    assert np.array_equal(read_idx(tmp_path / "images.gz", data.IDX_IMAGES_MAGIC), images)
    assert np.array_equal(read_idx(tmp_path / "labels.gz", data.IDX_LABELS_MAGIC), labels)
    assert (tmp_path / "images.gz").read_bytes()[:2] == b"\x1f\x8b"  # the gzip signature


def test_corrupt_idx_files_raise_data_error_naming_the_file(tmp_path):
    images = np.zeros((4, SIDE, SIDE), dtype=np.uint8)
    not_gzip = tmp_path / "not-gzip.gz"
    not_gzip.write_bytes(b"this is not a gzip stream at all")
    cut = tmp_path / "cut-stream.gz"
    write_idx(cut, np.random.default_rng(0).integers(0, 256, (4, SIDE, SIDE)))
    cut.write_bytes(cut.read_bytes()[:200])
    wrong_magic = tmp_path / "wrong-magic.gz"
    write_idx(wrong_magic, images, magic=data.IDX_LABELS_MAGIC)
    short = tmp_path / "short-data.gz"
    with gzip.open(short, "wb") as stream:
        stream.write(struct.pack(">4I", data.IDX_IMAGES_MAGIC, 4, SIDE, SIDE) + bytes(3 * SIDE * SIDE))
    for path in (not_gzip, cut, wrong_magic, short):
        with pytest.raises(DataError, match="corrupt") as error:
            read_idx(path, data.IDX_IMAGES_MAGIC)
        assert path.name in str(error.value)
    with pytest.raises(DataError, match="magic 2049, expected 2051"):
        read_idx(wrong_magic, data.IDX_IMAGES_MAGIC)


def test_corrupt_file_inside_the_dataset_folder_is_reported(tiny_fashion):
    target = tiny_fashion / data.FASHION_MNIST_FILES["test_labels"]
    target.write_bytes(target.read_bytes()[:-5])
    with pytest.raises(DataError, match="corrupt") as error:
        load_dataset("fashion-mnist", data_dir=tiny_fashion, val_size=8)
    assert target.name in str(error.value)


def test_wrong_image_size_is_refused(tiny_fashion):
    write_idx(tiny_fashion / data.FASHION_MNIST_FILES["train_images"], np.zeros((N_TINY_TRAIN, 27, 27)))
    with pytest.raises(DataError, match="27x27.*28x28"):
        load_dataset("fashion-mnist", data_dir=tiny_fashion, val_size=8)


def test_missing_files_in_data_dir_say_where_and_what_to_do(tmp_path, monkeypatch):
    def no_download(target):
        raise AssertionError("a given data_dir must be the only place searched")

    monkeypatch.setattr(data, "_download_fashion_mnist", no_download)
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist", data_dir=tmp_path)
    message = str(error.value)
    assert str(tmp_path) in message and "apt-get install dataset-fashion-mnist" in message
    assert "--data-dir" in message and "t10k-labels-idx1-ubyte.gz" in message


def test_search_order_and_message_without_data_dir(tmp_path, tiny_fashion, monkeypatch):
    system, cache = tmp_path / "system", tmp_path / "cache"
    monkeypatch.setattr(data, "FASHION_MNIST_SYSTEM_DIR", system)
    monkeypatch.setattr(data, "FASHION_MNIST_CACHE_DIR", cache)
    monkeypatch.setattr(data, "_download_fashion_mnist", lambda target: False)
    monkeypatch.delenv("PYROIB_DATA_DIR", raising=False)
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist")
    assert str(system) in str(error.value) and str(cache) in str(error.value)
    (tmp_path / "env").mkdir()
    (tmp_path / "env" / "fashion-mnist").symlink_to(tiny_fashion)
    monkeypatch.setenv("PYROIB_DATA_DIR", str(tmp_path / "env"))
    assert data.fashion_mnist_dirs() == [tmp_path / "env" / "fashion-mnist", system, cache]
    splits = load_dataset("fashion-mnist", val_size=8, binarize="none")
    assert len(splits.train) + len(splits.val) == N_TINY_TRAIN


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"name": "mnist"}, "fashion-mnist, digits, synthetic"),
        ({"name": "digits", "binarize": "dyn"}, "none, static, dynamic"),
        ({"name": "synthetic", "val_size": 1000}, "val_size=1000"),
        ({"name": "synthetic", "val_size": -1}, "val_size=-1"),
        ({"name": "synthetic", "seed": -1}, "seed"),
    ],
)
def test_bad_arguments_raise_value_errors_saying_what_to_use(kwargs, match):
    with pytest.raises(ValueError, match=match):
        load_dataset(kwargs.pop("name"), **kwargs)


def test_dataset_names_and_unknown_split():
    assert dataset_names() == ["fashion-mnist", "digits", "synthetic", "dsprites"]
    with pytest.raises(ValueError, match="train, val, test"):
        load_dataset("synthetic").split("validation")
    assert issubclass(DataError, ValueError)


@pytest.mark.skipif(
    not all((data.FASHION_MNIST_SYSTEM_DIR / f).is_file() for f in data.FASHION_MNIST_FILES.values()),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_real_fashion_mnist_from_the_debian_package():
    splits = load_dataset("fashion-mnist", data_dir=data.FASHION_MNIST_SYSTEM_DIR, binarize="none")
    assert (len(splits.train), len(splits.val), len(splits.test)) == (55_000, 5_000, 10_000)
    assert splits.data_shape == (1, 28, 28) and splits.n_classes == 10
    # Fashion-MNIST is balanced: 6,000 training and 1,000 test images per class
    pool = torch.cat([splits.train_labels, splits.val_labels])
    assert torch.equal(pool.bincount(), torch.full((10,), 6_000))
    assert torch.equal(splits.test_labels.bincount(), torch.full((10,), 1_000))
    assert splits.train.max() == 1.0 and splits.train.min() == 0.0


def test_train_size_keeps_a_seeded_subset_of_the_training_split_in_order():
    from pyroib.data import DataError, load_dataset

    full = load_dataset("digits", binarize="none")
    small = load_dataset("digits", binarize="none", train_size=100)
    assert small.train.shape[0] == 100
    assert torch.equal(small.val, full.val) and torch.equal(small.test, full.test)
    # every kept image is a training image, in the training split's order
    positions = [int((full.train == image).flatten(1).all(1).nonzero()[0]) for image in small.train]
    assert positions == sorted(positions) and len(set(positions)) == 100
    assert torch.equal(load_dataset("digits", binarize="none", train_size=100).train, small.train)
    with pytest.raises(DataError, match="train_size=5000 does not fit"):
        load_dataset("digits", train_size=5000)


@pytest.mark.parametrize("name", ["digits", "synthetic"])
def test_each_split_knows_where_its_images_stand_in_the_data_sets_own_order(name):
    from sklearn.datasets import load_digits

    from pyroib.data import SYNTHETIC_SIZE, load_dataset, make_synthetic

    splits = load_dataset(name, binarize="none", train_size=50, seed=3)
    if name == "digits":
        own = torch.from_numpy(load_digits().images / 16.0).float()[:, None]
    else:
        own = make_synthetic(SYNTHETIC_SIZE, 3)[0]
    rows = set()
    for split in ("train", "val", "test"):
        images, _ = splits.split(split)
        index = splits.source_index[split]
        assert torch.equal(own[index], images), split
        rows |= set(index.tolist())
    assert len(rows) == sum(len(splits.source_index[k]) for k in ("train", "val", "test"))  # no image twice


def test_train_size_reaches_the_run_and_its_evaluation(tmp_path, capsys):
    import json

    from pyroib.cli import main

    run = tmp_path / "run"
    argv = ["train", "--dataset", "digits", "--train-size", "64", "--epochs", "1", "--batch-size", "32"]
    assert main([*argv, "--device", "cpu", "--no-progress", "--out", str(run)]) == 0
    assert json.loads((run / "config.json").read_text())["train_size"] == 64
    rows = (run / "metrics.jsonl").read_text().splitlines()
    assert json.loads(rows[-1])["step"] == 2  # 64 points in batches of 32
