"""A leaderboard across runs.

The runs, numbered, each with its full name, spec hash, technique, concept, model and file; then
one table per metric with each run's value after erasure and before it, each with its 95 %
bootstrap interval, the change and n. Run names are never cut: they sit on their own lines, and
the metric tables refer to runs by number, so they fit 80 columns.
Two results with the same spec hash are the same run found twice; they are reported.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from rich.table import Table
from rich.text import Text

from ..errors import UserError
from ..results import MetricEntry, RunResults, load_results, migration_note
from .table import direction, fmt_n, fmt_value, metric_meaning


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


@dataclass
class Row:
    """One run of the leaderboard, read from its typed results."""

    path: str
    results: RunResults
    metrics: dict[str, MetricEntry] = field(init=False)
    names: dict[str, str] = field(init=False)

    def __post_init__(self) -> None:
        self.metrics = self.results.metrics
        self.names = self.results.metric_names()

    @property
    def run(self) -> str:
        return self.results.run.name

    @property
    def spec(self) -> str:
        return self.results.run.spec_hash or "?"


def load_rows(paths: list[Path]) -> tuple[list[Row], list[str]]:
    """One row per distinct results.json (a file reached twice counts once), and the metric keys
    in first-seen order. A file this version cannot read (malformed, an unknown older shape, a
    newer schema) is a one-line error naming it."""
    rows, metrics, seen = [], [], set()
    for path in find_results(paths):
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        row = Row(str(path), load_results(path, "compare"))
        for key in row.metrics:
            if key not in metrics:
                metrics.append(key)
        rows.append(row)
    return rows, metrics


def duplicates(rows: list[Row]) -> list[str]:
    """A warning per spec hash shared by several results: the same run counted more than once."""
    by_spec: dict[str, list[Row]] = {}
    for row in rows:
        by_spec.setdefault(row.spec, []).append(row)
    return [f"warning: {len(same)} results have spec hash {spec} (the same run counted {len(same)} times): "
            + ", ".join(r.path for r in same)
            for spec, same in by_spec.items() if len(same) > 1 and spec != "?"]


def migrated(rows: list[Row]) -> list[str]:
    """A note per results.json read by migration (written with an older results schema, or none)."""
    return [migration_note(r.path, r.results) for r in rows if r.results.migrated]


def runs_text(rows: list[Row]) -> Text:
    """The runs, numbered: the full name on its own line (never cut), then spec hash, technique,
    concept and model."""
    text = Text()
    text.append("runs\n", style="bold")
    for i, row in enumerate(rows, 1):
        text.append(f" #{i}  ")
        res = row.results
        text.append(row.run, style="bold")
        text.append(f"\n      spec {row.spec} · {res.technique.name} on '{res.concept_name}' · {res.model.ref}"
                    f" · {row.path}\n")
    return text


def metric_table(rows: list[Row], key: str) -> Table:
    """One metric across the runs (by number): after and before with their 95 % CIs, Δ, n."""
    higher = next(r.metrics[key].after.higher_is_better for r in rows if key in r.metrics)
    name = next((r.names[key] for r in rows if key in r.names), key)
    meaning = metric_meaning(name).rstrip(". ")
    t = Table(title=f"{key} {direction(higher)}", caption=meaning or None, caption_justify="left")
    t.add_column("run", no_wrap=True)
    for col in ("after [95% CI]", "before [95% CI]", "Δ", "n"):
        t.add_column(col, justify="right", no_wrap=True)
    for i, row in enumerate(rows, 1):
        m = row.metrics.get(key)
        if m is None:
            t.add_row(f"#{i}", "–", "–", "–", "–")
            continue
        t.add_row(f"#{i}", fmt_value(m.after), fmt_value(m.before),
                  "–" if m.delta is None else f"{m.delta:+.3f}", fmt_n(m.after))
    return t


def render(rows: list[Row], metric_keys: list[str]) -> list:
    """What ``eval-learn compare`` prints: the numbered runs, then one table per metric."""
    return [runs_text(rows), *(metric_table(rows, key) for key in metric_keys)]
