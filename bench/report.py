"""Result files and the markdown table built from them."""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).parents[1]
RESULTS = ROOT / "bench" / "results"
DOC = ROOT / "docs" / "benchmarks.md"


def machine() -> dict[str, Any]:
    return {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}


def write_result(name: str, result: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"name": name, "date": time.strftime("%Y-%m-%d"), "machine": machine(), **result}
    path.write_text(json.dumps(payload, indent=2) + "\n")
    return path


def render_doc() -> str:
    lines = [
        "# Benchmarks",
        "",
        "Made by `make bench` from `bench/results/*.json`; do not edit by hand. Each benchmark runs",
        "its two sides alternately in one run, so the ratio is what to read:",
        "absolute figures move with whatever else the machine is doing.",
        "",
    ]
    for path in sorted(RESULTS.glob("*.json")):
        lines.append(render_section(json.loads(path.read_text())))
    return "\n".join(lines).rstrip() + "\n"


def render_section(result: dict[str, Any]) -> str:
    """One result's section: title, setup, table, verdict and notes (if any)."""
    m = result["machine"]
    lines = [
        f"## {result['title']}",
        "",
        result["description"],
        "",
        f"Run {result['date']} on {m['cpus']} CPUs ({m['machine']}), Python {m['python']}; "
        f"{result['setup']}.",
        "",
        "| measure | " + " | ".join(result["columns"]) + " |",
        "|---" * (len(result["columns"]) + 1) + "|",
    ]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in result["rows"]]
    lines += ["", result.get("verdict", ""), ""]
    if result.get("notes"):
        lines += [result["notes"], ""]
    return "\n".join(lines)


def write_doc() -> Path:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    DOC.write_text(render_doc())
    return DOC


def publish(name: str, result: dict[str, Any]) -> None:
    """Write the result and the regenerated doc, and print the table."""
    print(write_result(name, result))
    print(write_doc())
    for row in result["rows"]:
        print(" | ".join(row))
