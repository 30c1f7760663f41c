"""Provenance: every cached piece says which config and commit made it.

Benchmarks cache their pieces (run folders with a ``metrics.json``) and reuse them when the
command runs again. That is only safe if the piece was made with the same config: a piece left
over from another ``--steps``, another override or another data set would otherwise be reused
silently and land in a results table as if it belonged there. So a piece records, in
``provenance.json`` next to its results, the hash of its config, the config itself, the commit
and the time; before a piece is reused its record is checked against the config at hand, and a
mismatch (or a finished piece with no record at all) is refused rather than reused.

    record = check_piece(folder, cfg)     # None: nothing there yet; raises StalePieceError
    if record is None:
        ... make the piece ...
        record = record_piece(folder, cfg)
    row["provenance"] = provenance_label(record)
"""
from __future__ import annotations

import hashlib
import json
import subprocess
from datetime import datetime, timezone
from pathlib import Path

from core.io import write_json_atomic

REPO = Path(__file__).resolve().parents[1]
RECORD = "provenance.json"
FIX = "delete the folder or pass another --out"
SHOWN_KEYS = 5


class StalePieceError(RuntimeError):
    """A cached piece was made with another config (or cannot be shown to match this one)."""


# ---------------------------------------------------------------- the config and its hash
def plain_config(config):
    """The config as plain JSON values: an omegaconf config is resolved, tuples become lists."""
    try:
        from omegaconf import OmegaConf
    except ImportError:  # omegaconf is a dependency, but plain dicts need nothing
        OmegaConf = None
    if OmegaConf is not None and OmegaConf.is_config(config):
        config = OmegaConf.to_container(config, resolve=True)
    return json.loads(_canonical(config))


def _canonical(config) -> str:
    # sorted keys and fixed separators: the same config always gives the same text
    return json.dumps(config, sort_keys=True, separators=(",", ":"), ensure_ascii=True, default=str)


def config_hash(config) -> str:
    """The first 16 hex characters of the sha256 of the config's canonical JSON."""
    return hashlib.sha256(_canonical(plain_config(config)).encode()).hexdigest()[:16]


# ---------------------------------------------------------------- the commit
def _git(args: list[str], repo: Path) -> str:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True,
                          timeout=10).stdout.strip()


# Benchmarks write their results pages here while they run; those files are what a piece
# produces, not what made it, so they do not make the code dirty.
RESULTS_DIR = "docs/results"


def current_commit(repo=REPO) -> str:
    """``git rev-parse HEAD`` of ``repo`` (default: this project), ``+dirty`` when tracked files
    outside ``docs/results/`` have changes, ``unknown`` when git or the repository is unavailable.
    Never raises."""
    try:
        commit = _git(["rev-parse", "HEAD"], Path(repo))
        dirty = _git(["status", "--porcelain", "--untracked-files=no", "--", ".",
                      f":(exclude){RESULTS_DIR}"], Path(repo))
    except (OSError, ValueError, subprocess.SubprocessError):
        return "unknown"
    if not commit:
        return "unknown"
    return commit + ("+dirty" if dirty else "")


# ---------------------------------------------------------------- checking and recording a piece
def flatten(value, prefix: str = "") -> dict:
    """Nested dicts as dotted keys; lists and scalars are leaves."""
    if isinstance(value, dict) and value:
        out = {}
        for key, sub in value.items():
            out.update(flatten(sub, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix or "<config>": value}


def _show(value, absent: bool = False) -> str:
    if absent:
        return "<absent>"
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 40 else text[:37] + "..."


def changed_keys(old, new) -> list[str]:
    """``key: old -> new`` for every dotted key whose value differs between two configs."""
    old, new = flatten(plain_config(old)), flatten(plain_config(new))
    lines = []
    for key in sorted(old.keys() | new.keys()):
        if key in old and key in new and _canonical(old[key]) == _canonical(new[key]):
            continue
        lines.append(f"{key}: {_show(old.get(key), key not in old)} -> {_show(new.get(key), key not in new)}")
    return lines


def check_piece(folder, config) -> dict | None:
    """The stored record if ``folder`` was made with ``config``; None if it has no record and no
    results yet. Raises StalePieceError if it was made with another config, or if it holds a
    ``metrics.json`` but no record (made before provenance existed: it cannot be shown to match)."""
    folder = Path(folder)
    path = folder / RECORD
    if not path.is_file():
        if (folder / "metrics.json").is_file():
            raise StalePieceError(
                f"{folder} has a metrics.json but no {RECORD} (made before provenance was "
                f"recorded), so it cannot be shown to match this config: {FIX}")
        return None
    try:
        record = json.loads(path.read_text())
        stored = record["config_hash"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StalePieceError(f"{path} cannot be read ({err}): {FIX}") from err
    wanted = config_hash(config)
    if stored == wanted:
        return record
    changes = changed_keys(record.get("config", {}), config)
    shown = "; ".join(changes[:SHOWN_KEYS]) or "no key differs, the stored hash does"
    if len(changes) > SHOWN_KEYS:
        shown += f"; and {len(changes) - SHOWN_KEYS} more"
    raise StalePieceError(f"{folder} was made with another config (cfg {stored}, now {wanted}): "
                          f"{shown}. To rebuild it, {FIX}")


def record_piece(folder, config, **extra) -> dict:
    """Write ``folder/provenance.json`` (atomically) for ``config`` and return the record:
    config hash, config, commit, UTC creation time, and any ``extra`` fields."""
    record = {"config_hash": config_hash(config), "config": plain_config(config),
              "commit": current_commit(),
              "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
    clash = sorted(record.keys() & extra.keys())
    if clash:
        raise ValueError(f"record_piece: extra fields {clash} would replace the provenance itself")
    record.update(extra)
    write_json_atomic(record, Path(folder) / RECORD)
    return record


def amend_piece(folder, config, reason: str, keys) -> dict | None:
    """Re-key ``folder``'s record to ``config`` when the two differ only at ``keys``, settings
    known not to change what the piece holds (a dependency a piece was wrongly keyed on): the
    record keeps its commit and creation time, and lists the old hash, the keys and ``reason``
    under ``amended``, so a results row can say so. Returns the new record, or None (nothing to
    amend: no record, or another key differs too, which stays a refusal)."""
    path = Path(folder) / RECORD
    if not path.is_file():
        return None
    record = json.loads(path.read_text())
    old = record.get("config", {})
    differ = {k for k in old.keys() | dict(config).keys()
              if k not in old or k not in config or _canonical(old[k]) != _canonical(config[k])}
    if not differ or not differ <= set(keys):
        return None
    record.setdefault("amended", []).append(
        {"old_hash": record["config_hash"], "keys": sorted(differ), "reason": reason,
         "commit": current_commit(), "when": datetime.now(timezone.utc).isoformat(timespec="seconds")})
    record.update(config_hash=config_hash(config), config=plain_config(config))
    write_json_atomic(record, path)
    return record


def provenance_label(record: dict | None) -> str:
    """A short label for a results row: ``cfg 1a2b3c4d5e6f7a8b @ 9bec9e0`` (``+dirty`` kept)."""
    if not record:
        return "no provenance"
    commit = record.get("commit", "unknown")
    sha, dirty, _ = commit.partition("+dirty")
    short = sha[:7] if sha != "unknown" else sha
    label = f"cfg {record.get('config_hash', '?')} @ {short}{'+dirty' if dirty else ''}"
    return label + (" (amended)" if record.get("amended") else "")
