"""Datasets as tensors on the training device, and minibatches drawn by dataset index.

Every loader yields grey levels in [0, 1]; ``binarize`` then chooses what the model sees:

* ``"none"``: the grey levels.
* ``"static"``: each split is sampled once, x_bin ~ Bernoulli(x), and kept for every epoch.
* ``"dynamic"``: val and test are sampled once as for ``"static"``; train keeps its grey levels and
  :class:`BatchIterator` draws a fresh Bernoulli(x) for every batch of every pass. The model then
  fits E_{x_bin ~ Bernoulli(x)} log p(x_bin), the convention behind the published test NLLs of
  dynamically binarised (Fashion-)MNIST.

The one-off samples use CPU generators seeded from ``seed`` and one constant per split, so a seed
gives the same binary images on every device. Datasets are found by name in ``_LOADERS``.
"""

from __future__ import annotations

import gzip
import math
import operator
import os
import shutil
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import torch

from .decoded_cache import cached_array

BINARIZE_MODES = ("none", "static", "dynamic")
SPLIT_NAMES = ("train", "val", "test")
FASHION_MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # apt-get install dataset-fashion-mnist
FASHION_MNIST_CACHE_DIR = Path.home() / ".cache" / "pyroib" / "fashion-mnist"
FASHION_MNIST_SIDE = 28
FASHION_MNIST_CLASSES = 10
IDX_IMAGES_MAGIC = 2051  # 0x00000803: unsigned bytes, 3 dimensions
IDX_LABELS_MAGIC = 2049  # 0x00000801: unsigned bytes, 1 dimension
_IDX_UBYTE = 0x08
# Distinct streams derived from one user seed, so e.g. the val size never shifts the binarisation.
_STREAM = {
    "val": 1,
    "test": 2,
    "train": 3,
    "carve": 4,
    "digits-test": 5,
    "synthetic": 6,
    "train-size": 7,
    "dsprites-test": 8,
}


class DataError(ValueError):
    """A data problem the user can fix (missing or corrupt files, bad names or sizes)."""


def as_images(x: torch.Tensor) -> torch.Tensor:
    """Images as the networks read them: a binary data set kept as uint8 (dSprites: 737,280 images, 3 GB as bytes,
    12 GB as float32) becomes float, a batch at a time."""
    return x.to(torch.get_default_dtype()) if x.dtype == torch.uint8 else x


@dataclass(frozen=True)
class DataSplits:
    """Train, validation and test images ((N, C, H, W) float32 in [0, 1], or uint8 0/1 for a large binary data
    set: read them through :meth:`split`, :class:`BatchIterator` or :func:`as_images`) with int64 labels."""

    name: str
    train: torch.Tensor
    val: torch.Tensor
    test: torch.Tensor
    train_labels: torch.Tensor
    val_labels: torch.Tensor
    test_labels: torch.Tensor
    binarize: str
    n_classes: int
    # split name -> each image's position in the data set's own order: the row of the official training or test file,
    # or for dSprites the official index, whose five factors are pyroib.dsprites.factors_of(index)
    source_index: dict[str, torch.Tensor] | None = None

    @property
    def data_shape(self) -> tuple[int, ...]:
        return tuple(self.train.shape[1:])

    def split(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        pairs = {
            "train": (self.train, self.train_labels),
            "val": (self.val, self.val_labels),
            "test": (self.test, self.test_labels),
        }
        if name not in pairs:
            raise DataError(f"unknown split {name!r}; use one of {', '.join(pairs)}")
        images, labels = pairs[name]
        return as_images(images), labels


class _Raw(NamedTuple):
    """What a loader returns: grey images (float32, CPU) and labels before the val carve."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    n_classes: int
    default_val_size: int
    # each image's position in the data set's own order (dSprites: the index its factors follow from); None: 0, 1, ..
    train_source: torch.Tensor | None = None
    test_source: torch.Tensor | None = None


def _derived_seed(seed: int, stream: str) -> int:
    return int(np.random.SeedSequence([seed, _STREAM[stream]]).generate_state(1)[0])


def _generator(seed: int, stream: str) -> torch.Generator:
    return torch.Generator().manual_seed(_derived_seed(seed, stream))


# ---------------------------------------------------------------- idx files (Fashion-MNIST)


def read_idx(path: str | os.PathLike, magic: int) -> np.ndarray:
    """Decode a gzip-compressed idx file of unsigned bytes into a read-only uint8 array.

    The idx layout (LeCun's MNIST format) is big-endian: a 4-byte magic number 0x000008DD, where
    0x08 says unsigned bytes and DD is the number of dimensions D, then D 4-byte sizes, then
    prod(sizes) bytes in C order. Images use magic 2051 (D = 3, a 16-byte header), labels 2049
    (D = 1, 8 bytes). A wrong magic, a short or long payload or a bad gzip stream raise DataError.
    """
    path = Path(path)
    if (magic >> 8) != _IDX_UBYTE:
        raise ValueError(f"magic {magic} is not an unsigned-byte idx magic (0x000008DD)")
    try:
        with gzip.open(path, "rb") as stream:
            raw = stream.read()
    except FileNotFoundError:
        raise DataError(f"{path} does not exist") from None
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{path.name} is corrupt: not a complete gzip file ({exc}); replace {path} with a fresh copy"
        ) from None
    ndim = magic & 0xFF
    header = 4 * (1 + ndim)
    if len(raw) < header:
        raise DataError(f"{path.name} is corrupt: {len(raw)} bytes, shorter than an idx header")
    found = int.from_bytes(raw[:4], "big")
    if found != magic:
        raise DataError(f"{path.name} is corrupt or the wrong file: idx magic {found}, expected {magic}")
    dims = tuple(int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if len(raw) - header != math.prod(dims):
        raise DataError(
            f"{path.name} is corrupt: header {dims} needs {math.prod(dims)} bytes, "
            f"the file holds {len(raw) - header}; replace {path} with a fresh copy"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


@lru_cache(maxsize=8)
def _read_idx_cached(path: str, magic: int, mtime_ns: int, size: int) -> np.ndarray:
    # mtime and size in the key: a replaced file is read again, an unchanged one once per process, and from the
    # on-disk cache of decoded arrays across processes (pyroib.decoded_cache)
    return cached_array(path, lambda: read_idx(path, magic), decoder=f"idx-{magic}")


def _read_checked(folder: Path, key: str, n_classes: int) -> np.ndarray:
    path = folder / FASHION_MNIST_FILES[key]
    info = path.stat()
    is_images = key.endswith("images")
    array = _read_idx_cached(
        str(path), IDX_IMAGES_MAGIC if is_images else IDX_LABELS_MAGIC, info.st_mtime_ns, info.st_size
    )
    if is_images and array.shape[1:] != (FASHION_MNIST_SIDE, FASHION_MNIST_SIDE):
        raise DataError(
            f"{path.name} holds images of {array.shape[1]}x{array.shape[2]} pixels; "
            f"Fashion-MNIST images are {FASHION_MNIST_SIDE}x{FASHION_MNIST_SIDE}. "
            f"Point --data-dir at the original Fashion-MNIST files"
        )
    if not is_images and array.size and int(array.max()) >= n_classes:
        raise DataError(f"{path.name} is corrupt: label {int(array.max())} is not below {n_classes}")
    return array


def fashion_mnist_dirs(data_dir: str | os.PathLike | None = None) -> list[Path]:
    """The folders searched for the four Fashion-MNIST files, in order."""
    if data_dir is not None:
        return [Path(data_dir).expanduser()]
    env = os.environ.get("PYROIB_DATA_DIR")
    dirs = [Path(env).expanduser() / "fashion-mnist"] if env else []
    return dirs + [FASHION_MNIST_SYSTEM_DIR, FASHION_MNIST_CACHE_DIR]


def _holds_fashion_mnist(folder: Path) -> bool:
    return all((folder / name).is_file() for name in FASHION_MNIST_FILES.values())


def _download_fashion_mnist(target: Path) -> bool:
    try:
        from torchvision.datasets import FashionMNIST

        FashionMNIST(root=str(target), train=True, download=True)
        for name in FASHION_MNIST_FILES.values():
            shutil.copyfile(target / "FashionMNIST" / "raw" / name, target / name)
    except Exception:  # offline machines fail in many ways (DNS, TLS, HTTP, disk); all mean "no copy"
        return False
    return _holds_fashion_mnist(target)


def _locate_fashion_mnist(data_dir) -> Path:
    dirs = fashion_mnist_dirs(data_dir)
    for folder in dirs:
        if _holds_fashion_mnist(folder):
            return folder
    if data_dir is None and _download_fashion_mnist(FASHION_MNIST_CACHE_DIR):
        return FASHION_MNIST_CACHE_DIR
    missing = [n for n in FASHION_MNIST_FILES.values() if not (dirs[0] / n).is_file()]
    raise DataError(
        "Fashion-MNIST not found. Searched: "
        + ", ".join(str(d) for d in dirs)
        + f" (missing in {dirs[0]}: {', '.join(missing)}). Install it with "
        "`sudo apt-get install dataset-fashion-mnist`, or pass --data-dir DIR (data_dir=DIR) naming "
        "a folder that holds " + ", ".join(FASHION_MNIST_FILES.values())
    )


def _load_fashion_mnist(data_dir, seed: int) -> _Raw:
    """Fashion-MNIST from its four idx files: 60,000 train and 10,000 test images, 10 classes."""
    folder = _locate_fashion_mnist(data_dir)
    arrays = {key: _read_checked(folder, key, FASHION_MNIST_CLASSES) for key in FASHION_MNIST_FILES}
    tensors = []
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        if len(images) != len(labels):
            raise DataError(
                f"{split} files in {folder} hold {len(images)} images but {len(labels)} "
                "labels; they do not belong together"
            )
        # astype copies, so the cached read-only arrays stay untouched
        tensors += [
            torch.from_numpy(images.astype(np.float32)).div_(255.0).unsqueeze(1),
            torch.from_numpy(labels.astype(np.int64)),
        ]
    return _Raw(*tensors, FASHION_MNIST_CLASSES, default_val_size=5_000)


# ---------------------------------------------------------------- small datasets


def _load_digits(data_dir, seed: int) -> _Raw:
    """scikit-learn's 1,797 8x8 digits (grey levels 0..16 scaled by 1/16), 20% stratified test."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    bunch = load_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    labels = bunch.target.astype(np.int64)
    train_x, test_x, train_y, test_y, train_row, test_row = train_test_split(
        images,
        labels,
        np.arange(len(labels)),
        test_size=0.2,
        stratify=labels,
        random_state=_derived_seed(seed, "digits-test"),
    )
    return _Raw(
        torch.from_numpy(train_x),
        torch.from_numpy(train_y),
        torch.from_numpy(test_x),
        torch.from_numpy(test_y),
        10,
        round(0.1 * len(train_y)),
        torch.from_numpy(train_row),
        torch.from_numpy(test_row),
    )


SYNTHETIC_SIZE, SYNTHETIC_TEST_SIZE, SYNTHETIC_SIDE, SYNTHETIC_CLASSES = 1_200, 200, 8, 4


def make_synthetic(n: int, seed: int, side: int = SYNTHETIC_SIDE):
    """Anti-aliased bars with known factors: returns images (n, 1, side, side), factors (n, 3), labels.

    Generative story, independently per image (lengths in pixels):
        orientation o ~ Bernoulli(1/2)     0: vertical bar, 1: horizontal bar
        position    u ~ Uniform(0, 1)      centre c = 1.5 + (side - 3) u
        thickness   v ~ Uniform(0, 1)      width  w = 1 + 2 v
        pixel value  = |[k, k + 1) ∩ [c - w/2, c + w/2]|, k the pixel's column (vertical) or row
        label y = floor(4 u)               the position in four equal bins
    The bar never leaves the canvas, so every line across it holds exactly w units of intensity and
    each image sums to side * w. ``factors`` holds (o, u, v) as float32.
    """
    generator = torch.Generator().manual_seed(_derived_seed(seed, "synthetic"))
    factors = torch.rand(n, 3, generator=generator)
    factors[:, 0] = (factors[:, 0] < 0.5).float()
    centre = 1.5 + (side - 3) * factors[:, 1:2]
    half_width = 0.5 + factors[:, 2:3]
    edges = torch.arange(side, dtype=torch.float32)
    profile = (torch.minimum(edges + 1, centre + half_width) - torch.maximum(edges, centre - half_width)).clamp(
        0.0, 1.0
    )
    vertical = profile[:, None, :].expand(n, side, side)
    images = torch.where(factors[:, 0, None, None] > 0, vertical.transpose(1, 2), vertical)
    labels = (factors[:, 1] * SYNTHETIC_CLASSES).long().clamp_(max=SYNTHETIC_CLASSES - 1)
    return images.unsqueeze(1).contiguous(), factors, labels


def _load_synthetic(data_dir, seed: int) -> _Raw:
    """1,200 bar images from :func:`make_synthetic`; the last 200 form the test set."""
    images, _, labels = make_synthetic(SYNTHETIC_SIZE, seed)
    n_pool = SYNTHETIC_SIZE - SYNTHETIC_TEST_SIZE
    return _Raw(
        images[:n_pool],
        labels[:n_pool],
        images[n_pool:],
        labels[n_pool:],
        SYNTHETIC_CLASSES,
        n_pool // 10,
        test_source=torch.arange(n_pool, SYNTHETIC_SIZE),  # rows of make_synthetic's images and factors
    )


DSPRITES_TEST_SIZE = 10_000


def _load_dsprites(data_dir, seed: int) -> _Raw:
    """dSprites rendered by :mod:`pyroib.dsprites` (cached after the first use), kept as bytes. It has no official
    split: 10,000 images drawn with a fixed seed are the test set, the rest the training pool. Labels are the shape;
    every image's five factors follow from its index (:func:`pyroib.dsprites.factors_of`)."""
    from . import dsprites

    packed = dsprites.all_images()
    images = torch.from_numpy(np.unpackbits(packed, axis=1).reshape(-1, 1, dsprites.SIZE, dsprites.SIZE))
    shapes = torch.from_numpy(dsprites.factors_of(np.arange(len(packed)))[:, 0].astype(np.int64))
    order = torch.randperm(len(packed), generator=_generator(0, "dsprites-test"))
    test, pool = order[:DSPRITES_TEST_SIZE].sort().values, order[DSPRITES_TEST_SIZE:].sort().values
    return _Raw(images[pool], shapes[pool], images[test], shapes[test], 3, 10_000, pool, test)


_LOADERS: dict[str, Callable[..., _Raw]] = {
    "fashion-mnist": _load_fashion_mnist,
    "digits": _load_digits,
    "synthetic": _load_synthetic,
    "dsprites": _load_dsprites,
}


def dataset_names() -> list[str]:
    return list(_LOADERS)


def _as_int(value, what: str) -> int:
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an integer, got {value!r}") from None


def load_spec_dataset(spec, device="cpu", binarize: str | None = None) -> DataSplits:
    """The splits a run's spec names (its data set, files, binarisation, validation and training sizes)."""
    return load_dataset(
        spec.dataset,
        data_dir=spec.data_dir,
        binarize=spec.binarize if binarize is None else binarize,
        val_size=spec.val_size,
        train_size=spec.train_size,
        classes=spec.classes,
        device=device,
    )


def load_dataset(
    name: str,
    *,
    data_dir: str | None = None,
    binarize: str = "dynamic",
    val_size: int | None = None,
    device="cpu",
    seed: int = 0,
    train_size: int | None = None,
    classes: list[int] | None = None,
) -> DataSplits:
    """Load ``name`` and return its splits on ``device``.

    Validation images are the last ``val_size`` entries of a permutation of the training pool drawn
    from ``seed`` (kept in their original order); the default is the dataset's own (5,000 for
    Fashion-MNIST, 10% of the pool otherwise). ``train_size`` keeps that many of the remaining training images, a
    seeded random subset in their original order, for quick runs (validation and test splits are unchanged).
    ``classes`` keeps only the training and validation points of those labels (before ``train_size``); the test
    split keeps every class, as the one-class protocol of novelty detection asks. ``data_dir`` only matters for
    Fashion-MNIST.
    """
    if name not in _LOADERS:
        raise DataError(f"unknown dataset {name!r}; choose one of {', '.join(_LOADERS)}")
    if binarize not in BINARIZE_MODES:
        raise DataError(f"unknown binarize mode {binarize!r}; choose one of {', '.join(BINARIZE_MODES)}")
    seed = _as_int(seed, "seed")
    if seed < 0:
        raise DataError(f"seed must be non-negative, got {seed}")
    raw = _LOADERS[name](data_dir, seed)
    n_pool = len(raw.train_y)
    val_size = raw.default_val_size if val_size is None else _as_int(val_size, "val_size")
    if not 0 <= val_size < n_pool:
        raise DataError(
            f"val_size={val_size} does not fit {name}'s {n_pool} training images; "
            f"pass a val_size from 0 to {n_pool - 1}"
        )
    order = torch.randperm(n_pool, generator=_generator(seed, "carve"))
    index = {"train": order[: n_pool - val_size].sort().values, "val": order[n_pool - val_size :].sort().values}
    if classes is not None:
        index = _only_classes(index, raw.train_y, classes, name)
    if train_size is not None:
        train_size = _as_int(train_size, "train_size")
        if not 1 <= train_size <= len(index["train"]):
            raise DataError(
                f"train_size={train_size} does not fit {name}'s {len(index['train'])} training images (after the "
                f"{val_size} validation images); pass a train_size from 1 to {len(index['train'])}"
            )
        keep = torch.randperm(len(index["train"]), generator=_generator(seed, "train-size"))[:train_size]
        index["train"] = index["train"][keep.sort().values]
    images = {"train": raw.train_x[index["train"]], "val": raw.train_x[index["val"]], "test": raw.test_x}
    labels = {"train": raw.train_y[index["train"]], "val": raw.train_y[index["val"]], "test": raw.test_y}
    train_source = torch.arange(n_pool) if raw.train_source is None else raw.train_source
    test_source = torch.arange(len(raw.test_y)) if raw.test_source is None else raw.test_source
    sources = {"train": train_source[index["train"]], "val": train_source[index["val"]], "test": test_source}
    # a data set stored as bytes is binary already: Bernoulli(x) = x
    once = (
        {"none": (), "static": SPLIT_NAMES, "dynamic": ("val", "test")}[binarize]
        if raw.train_x.is_floating_point()
        else ()
    )
    for split in once:
        images[split] = torch.bernoulli(images[split], generator=_generator(seed, split))
    device = torch.device(device)
    return DataSplits(
        name=name,
        binarize=binarize,
        n_classes=raw.n_classes,
        **{split: images[split].contiguous().to(device) for split in SPLIT_NAMES},
        **{f"{split}_labels": labels[split].to(device) for split in SPLIT_NAMES},
        source_index=sources,
    )


def _only_classes(index: dict, labels: torch.Tensor, classes, name: str) -> dict:
    """The training and validation indices whose label is one of ``classes``."""
    chosen = sorted({_as_int(c, "classes") for c in classes})
    present = sorted(int(v) for v in labels.unique()) if labels.dim() == 1 else []
    missing = [c for c in chosen if c not in present]
    if not chosen or missing:
        raise DataError(
            f"classes {missing or chosen} are not labels of {name} (its labels are "
            f"{', '.join(map(str, present)) or 'not single classes'}); pass --classes from those"
        )
    wanted = torch.tensor(chosen)
    return {split: i[torch.isin(labels[i], wanted)] for split, i in index.items()}


class BatchIterator:
    """Shuffled minibatches of ``splits.train``, gathered by dataset index on the data's device.

    With ``world`` processes, every process draws the same permutation and takes its ``rank``-th slice of
    ``batch_size`` points of each global batch of ``world × batch_size`` (:mod:`pyroib.distributed`).

    Each pass draws ``torch.randperm(N, generator=generator)`` on the CPU (the same order on every
    device for a given generator state), moves it to the device once, and yields ``(x, y, index)``
    with ``x = train[index]``, ``y = train_labels[index]``. Under ``binarize == "dynamic"`` x is
    drawn afresh, x ~ Bernoulli(train[index]), from the global RNG of the data's device; restoring
    ``generator.get_state()`` and ``torch.get_rng_state()`` (``torch.cuda.get_rng_state()`` on CUDA)
    taken before a pass replays it exactly. The permutation is drawn when iteration starts.
    """

    def __init__(
        self,
        splits: DataSplits,
        batch_size: int,
        generator: torch.Generator,
        drop_last: bool = False,
        rank: int = 0,
        world: int = 1,
    ):
        if not isinstance(splits, DataSplits):
            raise TypeError(f"splits must be DataSplits from load_dataset, got {type(splits).__name__}")
        if not isinstance(generator, torch.Generator) or generator.device.type != "cpu":
            raise TypeError("generator must be a CPU torch.Generator, e.g. torch.Generator().manual_seed(0)")
        batch_size = _as_int(batch_size, "batch_size")
        n_train = splits.train.shape[0]
        if not 1 <= batch_size * world <= n_train:
            raise DataError(
                f"batch_size={batch_size}{f' on each of {world} processes' if world > 1 else ''} must be between 1 "
                f"and the {n_train} training images of {splits.name}"
                + (f" divided by the {world} processes" if world > 1 else "")
            )
        self.splits, self.batch_size, self.generator = splits, batch_size, generator
        # processes must take the same number of steps: with several, an epoch's incomplete global batch is dropped
        self.drop_last = bool(drop_last) or world > 1
        self.rank, self.world = rank, world

    def __len__(self) -> int:
        n_train, step = self.splits.train.shape[0], self.batch_size * self.world
        return n_train // step if self.drop_last else -(-n_train // step)

    def __iter__(self):
        train, labels = self.splits.train, self.splits.train_labels
        order = torch.randperm(train.shape[0], generator=self.generator).to(train.device)
        resample = self.splits.binarize == "dynamic" and train.is_floating_point()
        step = self.batch_size * self.world
        for start in range(0, len(self) * step, step):
            # this process's slice of the global batch (all of it with one process)
            index = order[start + self.rank * self.batch_size : start + (self.rank + 1) * self.batch_size]
            x = as_images(train.index_select(0, index))
            yield (torch.bernoulli(x) if resample else x), labels.index_select(0, index), index
