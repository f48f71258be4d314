"""The on-disk cache of decoded data sets: read instead of decoding when current, rebuilt when stale or damaged."""

import gzip
import os

import numpy as np
import pytest
from test_data import write_idx

from pyroib import data
from pyroib.decoded_cache import cache_dir, cached_array


@pytest.fixture
def source(tmp_path, monkeypatch):
    monkeypatch.setenv("PYROIB_CACHE_DIR", str(tmp_path / "cache"))
    images = np.random.default_rng(0).integers(0, 256, size=(7, 28, 28), dtype=np.uint8)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    write_idx(path, images)
    return path, images


def decode(path):
    return data.read_idx(path, data.IDX_IMAGES_MAGIC)


def test_a_cached_array_is_read_without_decoding(source, monkeypatch):
    path, images = source
    first = cached_array(path, lambda: decode(path))
    assert np.array_equal(first, images) and len(list(cache_dir().glob("*.npy"))) == 1

    def no_gzip(*args, **kwargs):
        raise AssertionError("decoded again")

    monkeypatch.setattr(gzip, "open", no_gzip)
    again = cached_array(path, lambda: decode(path))
    assert np.array_equal(again, images) and not again.flags.writeable


def test_a_damaged_entry_is_detected_and_rebuilt(source):
    path, images = source
    cached_array(path, lambda: decode(path))
    (entry,) = cache_dir().glob("*.npy")
    raw = bytearray(entry.read_bytes())
    raw[-5] ^= 0xFF  # one pixel flipped: the file still loads, its checksum does not match
    entry.write_bytes(bytes(raw))
    assert np.array_equal(cached_array(path, lambda: decode(path)), images)
    entry.write_bytes(entry.read_bytes()[:100])  # truncated: does not load
    assert np.array_equal(cached_array(path, lambda: decode(path)), images)
    assert np.array_equal(np.load(entry), images)  # rewritten whole


def test_a_replaced_source_is_decoded_afresh(source):
    path, images = source
    cached_array(path, lambda: decode(path))
    write_idx(path, images[::-1].copy())
    os.utime(path, ns=(1, 1))  # another modification time, as a replaced file has
    assert np.array_equal(cached_array(path, lambda: decode(path)), images[::-1])


def test_an_unwritable_cache_folder_falls_back_to_decoding(source, monkeypatch, tmp_path):
    path, images = source
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    monkeypatch.setenv("PYROIB_CACHE_DIR", str(blocker / "cache"))
    assert np.array_equal(cached_array(path, lambda: decode(path)), images)


def test_a_corrupt_source_is_still_refused(source):
    path, _ = source
    path.write_bytes(b"not gzip at all")
    with pytest.raises(data.DataError, match="corrupt"):
        cached_array(path, lambda: decode(path))


def test_an_empty_entry_is_rebuilt(source):
    path, images = source
    cached_array(path, lambda: decode(path))
    (entry,) = cache_dir().glob("*.npy")
    entry.write_bytes(b"")
    assert np.array_equal(cached_array(path, lambda: decode(path)), images)


def test_another_decoding_of_the_same_file_is_not_served_this_ones_array(source):
    path, images = source
    cached_array(path, lambda: decode(path), decoder="idx-images")
    other = cached_array(path, lambda: np.zeros(3, dtype=np.uint8), decoder="something-else")
    assert np.array_equal(other, np.zeros(3))
