"""Resumable outputs: a folder of finished parts that is only reused for the settings that made it.

A task that writes its work in parts (sample batches, forecast initial times) resumes a killed run
by skipping the parts that exist. That is only right while the parts were made by the same
settings: ``keyed_folder`` keeps the settings next to the parts (``settings.json``) and clears the
folder, and the outputs joined from it, when they differ.
"""
from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

from core import distributed
from core.io import write_json_atomic

SETTINGS = "settings.json"
log = logging.getLogger(__name__)


def _normal(key: dict):
    """``key`` as it reads back from JSON (tuples as lists, keys as strings)."""
    return json.loads(json.dumps(key, sort_keys=True, default=str))


def _changed(old, new, prefix: str = "") -> list[str]:
    """The dotted names of the leaves that differ between two JSON-like values."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new), key=str):
            out += _changed(old.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [] if old == new else [prefix.rstrip(".") or "(all)"]


def keyed_folder(folder: Path, key: dict, also: tuple = ()) -> tuple[Path, bool]:
    """Make ``folder`` hold parts made with the settings ``key`` only; return (folder, cleared).

    When ``folder`` already holds parts and its ``settings.json`` is missing, unreadable or differs
    from ``key``, the folder and the paths in ``also`` (outputs joined from its parts) are removed
    and the run says so in one log line; then ``key`` is stored. ``key`` must be JSON-serialisable
    and is compared as JSON reads it back. Call it on every rank: rank 0 alone touches the disk,
    the others wait for it and learn whether it cleared.
    """
    folder = Path(folder)
    cleared = False
    if distributed.is_main():
        key = _normal(key)
        stored_path = folder / SETTINGS
        parts = [p for p in folder.iterdir() if p.name != SETTINGS] if folder.is_dir() else []
        try:
            stored = json.loads(stored_path.read_text()) if stored_path.is_file() else None
        except (OSError, ValueError):
            stored = {}  # unreadable: nothing is known about its parts
        if parts and stored != key:
            changed = "no settings stored" if stored is None else \
                "settings changed: " + ", ".join(_changed(stored, key)[:8])
            removed = [p for p in map(Path, also) if p.exists()]
            shutil.rmtree(folder)
            for p in removed:
                shutil.rmtree(p) if p.is_dir() else p.unlink()
            log.warning("%s: %s; removed %d old part(s)%s", folder, changed, len(parts),
                        "".join(f" and {p.name}" for p in removed))
            cleared = True
        folder.mkdir(parents=True, exist_ok=True)
        if stored != key or cleared:
            write_json_atomic(key, stored_path)
    distributed.barrier()
    return folder, bool(distributed.broadcast_object(cleared))
