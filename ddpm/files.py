"""Small file helpers every module shares: atomic writes, a file's sha256, and JSON-lines files.

A write is atomic (a temporary file beside the target, then os.replace): a reader, or a run killed half-way, sees the
old file or the new one, never a mix. So a checkpoint, a result or a cache is never left half-written.
"""
from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path

import torch


def _default_mode() -> int:
    """The mode a plain open() would give a new file (0666 less the umask): mkstemp's 0600 is for the temporary file
    only, and the result must stay readable by the user's other tools and groups."""
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _atomic_write(path: Path | str, write, mode: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.chmod(tmp, _default_mode())
    try:
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)  # atomic on POSIX and Windows: readers see the old file or the new one, never a mix
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_save(obj, path: Path | str) -> None:
    """torch.save(obj) to path, atomically."""
    _atomic_write(path, lambda f: torch.save(obj, f), "wb")


def atomic_write_text(path: Path | str, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text), "w")


def sha256(path: Path | str) -> str:
    """Hex sha256 of a file (read in 1 MiB chunks)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_lines(path: Path | str) -> list[dict]:
    """The rows of a JSON-lines file (blank lines skipped); [] when it does not exist."""
    path = Path(path)
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()] if path.is_file() else []


def append_json_line(path: Path | str, row: dict) -> None:
    """Add one row to a JSON-lines file (made with its folder if missing)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        f.write(json.dumps(row) + "\n")
