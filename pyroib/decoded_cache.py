"""Decoded data sets cached on disk, so a run, an evaluation or a report does not decode gzip files again.

``cached_array(source, decode)`` returns ``decode()``'s uint8 array for the file ``source``, from a cache file when
one matches. A cache entry is ``NAME-KEY.npy`` with ``NAME-KEY.json`` beside it in the cache folder
(``$PYROIB_CACHE_DIR``, else ``$XDG_CACHE_HOME/pyroib/decoded``, else ``~/.cache/pyroib/decoded``). The key hashes
the cache format's version, the source's resolved path, size and modification time, so an edited or replaced source
is decoded afresh; the JSON records the array's shape, dtype and CRC-32, which every read checks, so a damaged entry
is detected, decoded again and rewritten. Entries are written atomically. A cache folder that cannot be written is
not an error: the data are decoded as before.
"""

from __future__ import annotations

import hashlib
import json
import os
import zlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .checkpoint import atomic_write_bytes, write_text_atomic

CACHE_VERSION = 1


def cache_dir() -> Path:
    if os.environ.get("PYROIB_CACHE_DIR"):
        return Path(os.environ["PYROIB_CACHE_DIR"]).expanduser()
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "pyroib" / "decoded"


def _entry(source: Path, decoder: str) -> tuple[Path, Path, dict]:
    info = source.stat()
    return _keyed(source.name.split(".")[0], f"{decoder}:{source.resolve()}:{info.st_size}:{info.st_mtime_ns}")


def _keyed(name: str, key_text: str) -> tuple[Path, Path, dict]:
    key_text = f"{CACHE_VERSION}:{key_text}"
    key = hashlib.sha256(key_text.encode()).hexdigest()[:20]
    stem = cache_dir() / f"{name}-{key}"
    return stem.with_suffix(".npy"), stem.with_suffix(".json"), {"version": CACHE_VERSION, "source": key_text}


def _checksum(array: np.ndarray) -> int:
    return zlib.crc32(np.ascontiguousarray(array).data)


def _read(array_path: Path, meta_path: Path, expected: dict) -> np.ndarray | None:
    try:
        meta = json.loads(meta_path.read_text())
        if {k: meta.get(k) for k in expected} != expected:
            return None
        array = np.load(array_path, allow_pickle=False)
    except Exception:  # any damage (empty, truncated, not an array): decode again
        return None
    if list(array.shape) != meta.get("shape") or str(array.dtype) != meta.get("dtype"):
        return None
    if _checksum(array) != meta.get("crc32"):
        return None
    array.setflags(write=False)
    return array


def cached_array(source: str | os.PathLike, decode: Callable[[], np.ndarray], decoder: str = "") -> np.ndarray:
    """``decode()`` for ``source``, read from the cache when a whole, current entry exists, else decoded and cached.
    ``decoder`` names how the file is decoded (an idx magic, say): part of the key, so another reading of the same
    file is not served this one's array."""
    return _cached(*_entry(Path(source), decoder), decode)


def cached_generated(name: str, key: str, generate: Callable[[], np.ndarray]) -> np.ndarray:
    """``generate()``'s array, cached under ``name`` with ``key`` (a generator's name and version) instead of a
    source file's identity; the entry also records the array's SHA-256."""
    return _cached(*_keyed(name, key), generate, content_hash=True)


def _cached(array_path: Path, meta_path: Path, expected: dict, produce, content_hash: bool = False) -> np.ndarray:
    array = _read(array_path, meta_path, expected)
    if array is not None:
        return array
    array = produce()
    try:
        array_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(array_path, lambda f: np.save(f, array, allow_pickle=False))
        meta = {**expected, "shape": list(array.shape), "dtype": str(array.dtype), "crc32": _checksum(array)}
        if content_hash:
            meta["sha256"] = hashlib.sha256(np.ascontiguousarray(array).data).hexdigest()
        write_text_atomic(meta_path, json.dumps(meta) + "\n")
    except OSError:  # a read-only or full cache folder: decoding each time is slower, not wrong
        pass
    return array
