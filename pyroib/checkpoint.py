"""Crash-safe files: atomic writes, weights-only checkpoint loading, an append-only metrics log.

A checkpoint is written to a temporary file in the same directory, flushed to disk and moved over the old one with
``os.replace`` (atomic on POSIX), so a kill at any moment leaves either the previous good checkpoint or the new one,
never a torn file. Loading uses ``torch.load(weights_only=True)``: a checkpoint holds tensors, numbers, strings and
containers only, and loading one cannot run code.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


def write_text_atomic(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode()))


def save_figure(fig, path: str | Path, **kwargs) -> None:
    """A matplotlib figure written atomically (PNG by the path's suffix)."""
    path = Path(path)
    atomic_write_bytes(path, lambda f: fig.savefig(f, format=path.suffix.lstrip(".") or "png", **kwargs))


def _writer_is_gone(path: Path) -> bool:
    """Whether the process whose id ends a temporary's name (``.NAME.tmp-PID``) no longer runs."""
    try:
        pid = int(path.name.rsplit("-", 1)[1])
    except (IndexError, ValueError):
        return False
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:  # another user's live process
        return False
    return False


def remove_stale_temporaries(folder: str | Path) -> list[Path]:
    """Delete what killed writers left in ``folder``: temporary files and folders (``.NAME.tmp-PID``) and the old
    copies of replaced folders (``.NAME.old-PID``) of processes that no longer run; returns them. A live process's
    temporaries are left alone."""
    stale = [p for pattern in (".*.tmp-*", ".*.old-*") for p in Path(folder).glob(pattern) if _writer_is_gone(p)]
    for p in stale:
        shutil.rmtree(p) if p.is_dir() else p.unlink()
    return stale


@contextlib.contextmanager
def atomic_directory(path: str | Path):
    """Yield a temporary sibling folder to fill; on success it replaces ``path`` whole. A kill leaves the old folder
    (or, between the two renames, a complete old copy and a complete new one beside it), never a half-written one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a writer killed between its two renames left the old copy aside and no folder: put the old copy back
    for old in path.parent.glob(f".{path.name}.old-*"):
        if not path.exists() and _writer_is_gone(old):
            os.replace(old, path)
    remove_stale_temporaries(path.parent)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    for leftover in (tmp, old):
        shutil.rmtree(leftover, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():  # the second rename failed: keep the old folder where it was
            os.replace(old, path)
        shutil.rmtree(old, ignore_errors=True)
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
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


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
