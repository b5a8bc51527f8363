"""A leaderboard across runs: one row per run, one column per metric (after, with Δ to before)."""

from __future__ import annotations

import json
from pathlib import Path

from ..errors import UserError


def find_results(paths: list[Path]) -> list[Path]:
    found = []
    for p in paths:
        if p.is_file() and p.name == "results.json":
            found.append(p)
        elif p.is_dir():
            found += sorted(p.rglob("results.json"))
        else:
            raise UserError(f"compare: {p} is neither a results.json nor a folder")
    if not found:
        raise UserError(f"compare: no results.json under {', '.join(map(str, paths))}")
    return found


def load_rows(paths: list[Path]) -> tuple[list[dict], list[str]]:
    rows, metrics = [], []
    for path in find_results(paths):
        try:
            res = json.loads(path.read_text())
        except json.JSONDecodeError:
            raise UserError(f"compare: {path} is not valid JSON") from None
        row = {"run": res["run"]["name"], "technique": res["technique"]["name"],
               "concept": res["config"]["concept"]["name"], "model": res["model"]["ref"], "metrics": {}}
        for key, m in res["metrics"].items():
            row["metrics"][key] = m
            if key not in metrics:
                metrics.append(key)
        rows.append(row)
    return rows, metrics
