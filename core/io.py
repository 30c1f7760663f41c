"""Files: where expensive derived artefacts live, and writes that are never seen half-done.

Trained judges, tokenizers and generated data sets are cached under ``$C2F_CACHE`` (default
``~/.cache/coarse2fine``). Every file the project writes goes to a temporary name in the same
folder first and is then renamed, so a killed process leaves the old file or the new one. The
temporary name carries the writer's process id (``.<name>.<pid>.<random>.tmp``), so the next run
in a folder removes what a killed writer left (``remove_stale_temps``). A full disk raises
``DiskFullError``, naming the file; the old file stays.
"""
from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

import torch

from core.errors import DiskFullError, is_disk_full

CACHE_ENV = "C2F_CACHE"


def default_cache_dir() -> Path:
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "coarse2fine"


@contextmanager
def atomic_path(path, suffix: str = ".tmp"):
    """Yield a temporary path next to ``path``; on success rename it onto ``path``.

    Works for files and for folders (zarr stores); on error the temporary is removed and
    ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    os.unlink(tmp)
    tmp = Path(tmp)
    try:
        try:
            yield tmp
        except Exception as e:
            if is_disk_full(e):
                raise DiskFullError(path) from e
            raise
        if tmp.is_dir() and path.is_dir():  # a folder cannot be renamed onto a folder
            old = path.with_name(f".{path.name}.old{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        if tmp.is_dir():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def save_atomic(obj, path) -> Path:
    """``torch.save`` that never leaves a half-written file."""
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
    return Path(path)


def _strict(value):
    """NaN and infinities are not JSON: they are written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _strict(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_strict(v) for v in value]
    return value


def write_json_atomic(obj: dict, path) -> Path:
    """Strict JSON (NaN and infinities as null), written atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(_strict(obj), indent=2, sort_keys=True, allow_nan=False))
    return Path(path)


_TEMP = re.compile(r"^\..+\.(\d+)\.[^.]+\.tmp$")


def process_alive(pid: int) -> bool:
    """Whether a process with this id exists on this machine."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temps(folder) -> list[Path]:
    """Delete the temporary files (and folders) that killed writers left in ``folder``: those
    whose writer process no longer exists. Returns what was removed."""
    folder = Path(folder)
    removed = []
    if not folder.is_dir():
        return removed
    for entry in folder.iterdir():
        match = _TEMP.match(entry.name)
        if match is None or process_alive(int(match.group(1))):
            continue
        if entry.is_dir():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        removed.append(entry)
    return removed
