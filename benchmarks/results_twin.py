"""The machine-readable twin of a results page: its command line and every table row as JSON.

    python benchmarks/results_twin.py docs/results/graph.md [...]   # writes graph.json beside it

For pages whose benchmark writes only markdown; ``benchmarks/mnist.py`` writes its twin itself.
Each table becomes a list of rows keyed by the column headers, under the heading it follows;
numbers stay as the page prints them (strings), so the twin holds exactly the page's rows.
"""
from __future__ import annotations

import re
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from core.io import write_json_atomic  # noqa: E402


def _cells(line: str) -> list[str]:
    return [c.strip() for c in line.strip().strip("|").split("|")]


def twin(page: Path) -> dict:
    lines = page.read_text().splitlines()
    command = next((m.group(1) for ln in lines if (m := re.match(r"Command: `(.+?)`", ln))), None)
    tables, heading, i = [], None, 0
    while i < len(lines):
        if lines[i].startswith("#"):
            heading = lines[i].lstrip("#").strip()
        if lines[i].startswith("|") and i + 1 < len(lines) and re.match(r"^\|[-| :]+\|$", lines[i + 1].strip()):
            header, rows, i = _cells(lines[i]), [], i + 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(dict(zip(header, _cells(lines[i]))))
                i += 1
            tables.append({"section": heading, "columns": header, "rows": rows})
            continue
        i += 1
    return {"page": page.name, "command": command, "tables": tables}


if __name__ == "__main__":
    for name in sys.argv[1:]:
        page = Path(name)
        out = page.with_suffix(".json")
        write_json_atomic(twin(page), out)
        print(f"wrote {out}")
