"""Crash-safe files: atomic writes, weights-only checkpoint loading, an append-only metrics log.

A checkpoint is written to a temporary file in the same directory, flushed to disk and moved over the old one with
``os.replace`` (atomic on POSIX), so a kill at any moment leaves either the previous good checkpoint or the new one,
never a torn file. Loading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings and
containers only, and loading one cannot run code.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import torch


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, write) -> None:
    """Call ``write(file)`` on a temporary file, then atomically move it to ``path``."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    _fsync_dir(path.parent)


def save_checkpoint(state: dict, path: str | Path) -> None:
    atomic_write_bytes(path, lambda f: torch.save(state, f))


def load_checkpoint(path: str | Path, map_location="cpu") -> dict:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no checkpoint at {path}: train the run first (pyroib train ... --out {path.parent})")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as error:  # torch raises several types for damaged or non-weights files
        raise ValueError(
            f"cannot read checkpoint {path} ({type(error).__name__}: {error}); it is damaged or was "
            "not written by pyroib. Retrain, or restore it from a backup"
        ) from None


def write_json(path: str | Path, obj) -> None:
    text = json.dumps(obj, indent=2, sort_keys=True) + "\n"
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def append_jsonl(path: str | Path, row: dict) -> None:
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_jsonl(path: str | Path) -> list[dict]:
    """Rows of a JSON-lines file; a torn last line (a kill mid-write) is dropped."""
    rows = []
    path = Path(path)
    if not path.exists():
        return rows
    for line in path.read_text().splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def truncate_jsonl(path: str | Path, keep) -> None:
    """Atomically rewrite ``path`` keeping the rows for which ``keep(row)`` holds."""
    rows = [r for r in read_jsonl(path) if keep(r)]
    text = "".join(json.dumps(r) + "\n" for r in rows)
    atomic_write_bytes(path, lambda f: f.write(text.encode()))
