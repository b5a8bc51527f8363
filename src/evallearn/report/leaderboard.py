"""The leaderboard: technique settings × concepts × metrics, read from runs' typed results.

Input: run directories (each with a ``results.json``) and folders holding them — a suite's
output folder (its ``suite.json`` names the suite and says which cells failed), an export
pulled from the Hub (``eval-learn-export.json`` names the repo), or any folder of runs. Folders
whose name starts with ``_`` or ``.`` (``_base``, ``_techniques``, caches) are skipped.

What is shown, per concept:

* one row per run (its technique and the parameters it sets that differ from the technique's
  defaults — the *setting* — plus the model, seed or source where runs differ in them), and a row
  for the base model before erasure;
* each metric's value after erasure with its 95 % bootstrap interval, ``n`` and Δ to the base
  model, erasure metrics beside retention metrics (never one number without its parts: there
  is no composite score; ERR, a metric that is itself a composite, is shown as the metric it is);
* ★ marks the Pareto front on the plotted pair (no other setting is at least as good on both
  and better on one, on point values);
* the probes' values with their chance floors and each run's verdict;
* the plots: erasure vs retention per concept and per-probe recovery bars (:mod:`.plots`).

Outputs: HTML (one static file, plots inline), CSV and JSON lines (one tidy row per run ×
metric or probe, :data:`FIELDS`), Markdown (tables, plots as SVG files beside it).
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import UserError
from ..results import MetricEntry, MetricResult, RunResults, load_results, migration_note
from .plots import Bar, Point, bars_svg, colour, scatter_svg

WHO = "leaderboard"

#: what a registered metric measures: ``erasure`` (is the concept gone), ``retention`` (is the
#: rest kept) or ``composite`` (a metric that combines both). A plugin metric can say so itself
#: with a class attribute ``aspect``; anything else is ``other``.
ASPECTS = {"ua": "erasure", "asr": "erasure", "ira": "retention", "clip_score": "retention", "fid": "retention",
           "tifa": "retention", "err": "composite"}
ASPECT_ORDER = ("erasure", "retention", "composite", "other")

#: the manifest an export (``eval-learn push``) writes at its root; ``pull`` brings it back
EXPORT_MANIFEST = "eval-learn-export.json"

#: the columns of the tidy table (CSV, the Hub's JSON lines): one row per run × metric or probe
FIELDS = ("source", "run", "spec_hash", "model", "technique", "setting", "params", "concept", "concept_kind", "seed",
          "metric", "metric_name", "aspect", "higher_is_better", "value", "ci_low", "ci_high", "n", "nonfinite",
          "before", "before_ci_low", "before_ci_high", "before_n", "delta", "chance", "recovers", "verdict",
          "judges", "eval_learn", "path")


def aspect_of(metric_name: str) -> str:
    from .. import registry

    try:
        own = getattr(registry.metrics.get(metric_name), "aspect", None)
    except Exception:  # a metric from a plugin not installed here
        own = None
    return own if own in ASPECT_ORDER else ASPECTS.get(metric_name, "other")


# -- finding runs ---------------------------------------------------------------------------------
def _skipped(rel: Path) -> bool:
    return any(part.startswith(("_", ".")) for part in rel.parts[:-1])


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _source_of(folder: Path) -> tuple[str, list[str]]:
    """The label of a folder of runs (a suite's name, an export's repo, else the folder's name)
    and notes about it (a suite's failed or unfinished cells)."""
    notes: list[str] = []
    export = _read_json(folder / EXPORT_MANIFEST)
    if isinstance(export, dict) and export.get("repo"):
        return str(export["repo"]), notes
    suite = _read_json(folder / "suite.json")
    if isinstance(suite, dict):
        name = str(suite.get("name") or suite.get("suite") or folder.name)
        cells = suite.get("cells")
        if isinstance(cells, list):
            for cell in cells:
                if not isinstance(cell, dict):
                    continue
                status = cell.get("status")
                if status == "failed":
                    notes.append(f"suite {name}: cell {cell.get('id')} failed"
                                 + (f" ({cell['error']})" if cell.get("error") else "") + "; it is not on the board")
                elif status not in ("done", "cached", None):
                    notes.append(f"suite {name}: cell {cell.get('id')} is {status}; it is not on the board")
        elif (folder / "suite.json").exists():
            notes.append(f"{folder / 'suite.json'}: no cell list; read its runs only")
        return name, notes
    if (folder / "suite.json").exists():
        notes.append(f"{folder / 'suite.json'}: not readable JSON; read its runs only")
    return folder.name or str(folder), notes


def find_runs(paths: list[Path], who: str = WHO) -> tuple[list[tuple[str, Path]], list[str]]:
    """(source label, results.json) for every run under ``paths``, and notes. A path that is
    neither a results.json nor a folder, or a set of paths holding no results, is a one-line
    error."""
    found: list[tuple[str, Path]] = []
    notes: list[str] = []
    for p in map(Path, paths):
        if p.is_file() and p.name == "results.json":
            found.append((p.parent.parent.name or str(p.parent), p))
        elif p.is_dir() and (p / "results.json").is_file():
            found.append((p.parent.name or str(p), p / "results.json"))
        elif p.is_dir():
            label, more = _source_of(p)
            notes += more
            hits = [f for f in sorted(p.rglob("results.json")) if not _skipped(f.relative_to(p))]
            found += [(label, f) for f in hits]
        else:
            raise UserError(f"{who}: {p} is neither a results.json nor a folder")
    if not found:
        raise UserError(f"{who}: no results.json under {', '.join(map(str, paths))}")
    return found, notes


# -- the board ------------------------------------------------------------------------------------
def _plain(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def _short(value: Any) -> str:
    text = json.dumps(value, default=str, separators=(",", ":")) if not isinstance(value, str) else value
    return text if len(text) <= 40 else text[:37] + "…"


def setting_of(technique: str, params: dict[str, Any]) -> dict[str, Any]:
    """The parameters a run sets that differ from the technique's defaults (all of them for a
    technique not installed here)."""
    from .. import registry

    try:
        fields = registry.techniques.get(technique).Params.model_fields
    except Exception:
        return dict(params)
    out = {}
    for key, value in params.items():
        f = fields.get(key)
        if f is None or f.is_required():
            out[key] = value
            continue
        try:
            default = _plain(f.get_default(call_default_factory=True))
        except Exception:
            default = object()
        if _plain(value) != default:
            out[key] = value
    return out


@dataclass
class Entry:
    """One run on the board."""

    source: str
    path: Path
    results: RunResults
    setting: dict[str, Any] = field(init=False)
    label: str = ""
    colour: str = ""

    def __post_init__(self) -> None:
        self.setting = setting_of(self.technique, self.results.technique.params)

    @property
    def technique(self) -> str:
        return self.results.technique.name

    @property
    def setting_text(self) -> str:
        return ", ".join(f"{k}={_short(v)}" for k, v in self.setting.items()) or "defaults"

    @property
    def concept(self) -> str:
        return self.results.concept_name

    @property
    def model(self) -> str:
        return self.results.model.ref

    @property
    def seed(self) -> int | None:
        return self.results.seeds.run_seed

    @property
    def spec(self) -> str:
        return self.results.run.spec_hash or "?"

    @property
    def verdict(self) -> str | None:
        p = self.results.probes
        return None if p is None else p.verdict.label


@dataclass(frozen=True)
class Column:
    key: str
    name: str
    aspect: str
    higher_is_better: bool

    @property
    def arrow(self) -> str:
        return "↑" if self.higher_is_better else "↓"

    @property
    def rate(self) -> bool:
        return self.name not in ("clip_score", "fid")


@dataclass
class Board:
    entries: list[Entry]
    notes: list[str] = field(default_factory=list)
    #: chosen scatter axes (metric keys); None: the first erasure / retention metric of a concept
    erasure: str | None = None
    retention: str | None = None

    def concepts(self) -> list[str]:
        return list(dict.fromkeys(e.concept for e in self.entries))

    def of(self, concept: str) -> list[Entry]:
        return [e for e in self.entries if e.concept == concept]

    def columns(self, concept: str) -> list[Column]:
        cols: dict[str, Column] = {}
        for e in self.of(concept):
            names = e.results.metric_names()
            for key, m in e.results.metrics.items():
                if key not in cols:
                    name = names.get(key, key)
                    cols[key] = Column(key, name, aspect_of(name), m.after.higher_is_better)
        return sorted(cols.values(), key=lambda c: ASPECT_ORDER.index(c.aspect))

    def axes(self, concept: str) -> tuple[Column | None, Column | None]:
        cols = self.columns(concept)

        def pick(aspect: str, want: str | None) -> Column | None:
            if want is not None:
                return next((c for c in cols if c.key == want), None)
            return next((c for c in cols if c.aspect == aspect), None)

        return pick("erasure", self.erasure), pick("retention", self.retention)

    def probe_keys(self, concept: str) -> list[str]:
        keys: dict[str, None] = {}
        for e in self.of(concept):
            if e.results.probes is not None:
                keys.update(dict.fromkeys(e.results.probes.results))
        return list(keys)

    def base(self, concept: str, model: str) -> dict[str, MetricResult]:
        """The base model's values (``before``) for ``concept`` on ``model``: the first run's of
        each metric (a note is added where runs disagree)."""
        out: dict[str, MetricResult] = {}
        for e in self.of(concept):
            if e.model != model and (e.results.config.get("base_model") or e.model) != model:
                continue
            for key, m in e.results.metrics.items():
                if m.before is None:
                    continue
                if key not in out:
                    out[key] = m.before
                elif out[key].value != m.before.value and m.before.value is not None:
                    note = (f"concept {concept}: runs report different base-model values for {key} "
                            f"({_num(out[key].value)} vs {_num(m.before.value)} in {e.path}); the first is shown")
                    if note not in self.notes:
                        self.notes.append(note)
        return out

    def front(self, concept: str) -> set[int]:
        """Indices (into :meth:`of`) on the Pareto front of the plotted erasure/retention pair."""
        ex, ry = self.axes(concept)
        if ex is None or ry is None:
            return set()
        pts = {}
        for i, e in enumerate(self.of(concept)):
            x, y = _after(e, ex.key), _after(e, ry.key)
            if x is not None and y is not None:
                pts[i] = (x if ex.higher_is_better else -x, y if ry.higher_is_better else -y)
        return {i for i, (x, y) in pts.items()
                if not any(ox >= x and oy >= y and (ox > x or oy > y) for j, (ox, oy) in pts.items() if j != i)}


def _after(e: Entry, key: str) -> float | None:
    m = e.results.metrics.get(key)
    v = None if m is None else m.after.value
    return v if v is not None and math.isfinite(v) else None


def _num(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _label(e: Entry, vary: dict[str, bool]) -> str:
    parts = [e.technique + ("" if e.setting_text == "defaults" else f" ({e.setting_text})")]
    if vary["model"]:
        parts.append(e.model)
    if vary["seed"]:
        parts.append(f"seed {e.seed}")
    if vary["source"]:
        parts.append(f"[{e.source}]")
    return " · ".join(parts)


def load_board(paths: list[Path], erasure: str | None = None, retention: str | None = None,
               who: str = WHO) -> Board:
    """Every run under ``paths`` read through :func:`evallearn.results.load_results` (a file
    reached twice counts once; a spec hash found twice is noted)."""
    runs, notes = find_runs(paths, who)
    entries, seen, specs = [], set(), {}
    for source, path in runs:
        real = path.resolve()
        if real in seen:
            continue
        seen.add(real)
        res = load_results(path, who)
        if res.migrated:
            notes.append(migration_note(path, res))
        e = Entry(source, path, res)
        if e.spec != "?" and e.spec in specs:
            notes.append(f"warning: {path} and {specs[e.spec]} have the same spec hash {e.spec} (the same run "
                         "found twice); both are shown")
        specs.setdefault(e.spec, path)
        entries.append(e)
    vary = {"model": len({e.model for e in entries}) > 1, "source": len({e.source for e in entries}) > 1}
    groups: dict[tuple, set] = {}
    for e in entries:
        groups.setdefault((e.concept, e.technique, e.setting_text, e.model, e.source), set()).add(e.seed)
    vary["seed"] = any(len(s) > 1 for s in groups.values())
    keys = [(e.technique, e.setting_text) for e in entries]
    palette = {k: colour(i) for i, k in enumerate(dict.fromkeys(keys))}
    for e, k in zip(entries, keys, strict=True):
        e.label = _label(e, vary)
        e.colour = palette[k]
    for concept in dict.fromkeys(e.concept for e in entries):
        dup = {}
        for e in (x for x in entries if x.concept == concept):
            dup.setdefault(e.label, []).append(e)
        for same in dup.values():
            if len(same) > 1:  # same label twice on a concept: tell them apart by spec hash
                for e in same:
                    e.label += f" #{e.spec[:6]}"
    board = Board(entries, notes, erasure, retention)
    for concept in board.concepts():
        for model in _models(board, concept):
            board.base(concept, model)  # notes runs that disagree on the base model's values, before any output
        for key, want in (("erasure", erasure), ("retention", retention)):
            if want is not None and all(c.key != want for c in board.columns(concept)):
                raise UserError(f"{who}: --{key} {want}: no such metric on concept '{concept}' (it has "
                                f"{', '.join(c.key for c in board.columns(concept)) or 'none'})")
    return board


# -- the tidy table ---------------------------------------------------------------------------------
def _row(e: Entry) -> dict[str, Any]:
    r = e.results
    return {"source": e.source, "run": r.run.name, "spec_hash": r.run.spec_hash, "model": e.model,
            "technique": e.technique, "setting": e.setting_text,
            "params": json.dumps(r.technique.params, sort_keys=True, default=str), "concept": e.concept,
            "concept_kind": r.concept_kind, "seed": e.seed, "verdict": e.verdict, "eval_learn": r.run.eval_learn,
            "path": str(e.path)}


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


def records(board: Board) -> list[dict[str, Any]]:
    """One row per run × metric and run × probe, with every column of :data:`FIELDS`."""
    out = []
    for e in board.entries:
        base = _row(e)
        names = e.results.metric_names()
        for key, m in e.results.metrics.items():
            name = names.get(key, key)
            b = m.before
            out.append({**dict.fromkeys(FIELDS), **base, "metric": key, "metric_name": name, "aspect": aspect_of(name),
                        "higher_is_better": m.after.higher_is_better, "value": _finite(m.after.value),
                        "ci_low": m.after.ci_low, "ci_high": m.after.ci_high, "n": m.after.n,
                        "nonfinite": m.after.nonfinite, "before": None if b is None else _finite(b.value),
                        "before_ci_low": None if b is None else b.ci_low,
                        "before_ci_high": None if b is None else b.ci_high, "before_n": None if b is None else b.n,
                        "delta": _finite(m.delta), "judges": json.dumps(m.after.judges, sort_keys=True, default=str)})
        probes = e.results.probes
        for key, pe in (probes.results if probes is not None else {}).items():
            row = probes.verdict.probes.get(key)
            p, b = pe.after, pe.before
            out.append({**dict.fromkeys(FIELDS), **base, "metric": key, "metric_name": p.probe or key,
                        "aspect": f"probe {p.kind}", "higher_is_better": p.higher_is_better,
                        "value": _finite(p.value), "ci_low": p.ci_low, "ci_high": p.ci_high, "n": p.n,
                        "nonfinite": p.nonfinite, "before": None if b is None else _finite(b.value),
                        "before_ci_low": None if b is None else b.ci_low,
                        "before_ci_high": None if b is None else b.ci_high, "before_n": None if b is None else b.n,
                        "delta": _finite(pe.delta), "chance": p.chance,
                        "recovers": None if row is None else row.recovers,
                        "judges": json.dumps(p.judges, sort_keys=True, default=str)})
    return out


def to_csv(board: Board) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
    w.writeheader()
    for rec in records(board):
        w.writerow({k: "" if v is None else v for k, v in rec.items()})
    return buf.getvalue()


def to_jsonl(board: Board) -> str:
    return "".join(json.dumps(rec, sort_keys=False) + "\n" for rec in records(board))


# -- cells as text ------------------------------------------------------------------------------------
def cell_text(m: MetricResult | None, delta: float | None = None) -> str:
    """``0.750 [0.583, 0.917] n=24 Δ+0.750``; ``no value``; ``–`` (not measured)."""
    if m is None:
        return "–"
    if m.value is None or not math.isfinite(m.value):
        return "no value"
    text = f"{m.value:.3f}"
    if m.ci_low is not None and m.ci_high is not None:
        text += f" [{m.ci_low:.3f}, {m.ci_high:.3f}]"
    text += f" n={'?' if m.n is None else m.n}"
    if delta is not None and math.isfinite(delta):
        text += f" Δ{delta:+.3f}"
    return text


def _entry_cell(e: Entry, key: str) -> str:
    m: MetricEntry | None = e.results.metrics.get(key)
    return "–" if m is None else cell_text(m.after, m.delta)


def _probe_cell(e: Entry, key: str) -> str:
    probes = e.results.probes
    pe = None if probes is None else probes.results.get(key)
    if pe is None:
        return "–"
    p = pe.after
    text = cell_text(p)
    if p.chance is not None:
        text += f" (chance {p.chance:.3g})"
    row = probes.verdict.probes.get(key)
    if row is not None and row.recovers:
        text += " recovers"
    return text


def _models(board: Board, concept: str) -> list[str]:
    return list(dict.fromkeys(e.results.config.get("base_model") or e.model for e in board.of(concept)))


def concept_rows(board: Board, concept: str) -> tuple[list[str], list[list[str]]]:
    """The concept's table as text: header and rows (base model first, then runs)."""
    cols = board.columns(concept)
    front = board.front(concept)
    header = ["technique (setting)", *[f"{c.key} {c.arrow} ({c.aspect})" for c in cols], "probe verdict", "★"]
    rows = []
    for model in _models(board, concept):
        base = board.base(concept, model)
        if base:
            rows.append([f"base model {model} (before erasure)", *[cell_text(base.get(c.key)) for c in cols], "", ""])
    for i, e in enumerate(board.of(concept)):
        rows.append([e.label, *[_entry_cell(e, c.key) for c in cols], e.verdict or "–", "★" if i in front else ""])
    return header, rows


def probe_rows_text(board: Board, concept: str) -> tuple[list[str], list[list[str]]]:
    keys = board.probe_keys(concept)
    if not keys:
        return [], []
    header = ["technique (setting)", *keys, "verdict", "recovered by"]
    rows = []
    for e in board.of(concept):
        if e.results.probes is None:
            continue
        v = e.results.probes.verdict
        rows.append([e.label, *[_probe_cell(e, k) for k in keys], v.label, ", ".join(v.recovered_by) or "–"])
    return header, rows


# -- plots ----------------------------------------------------------------------------------------------
def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-") or "concept"


def scatter(board: Board, concept: str) -> str | None:
    """Erasure vs retention on ``concept``: one point per run, the base model hollow."""
    ex, ry = board.axes(concept)
    if ex is None or ry is None:
        return None
    points = []
    for model in _models(board, concept):
        base = board.base(concept, model)
        bx, by = base.get(ex.key), base.get(ry.key)
        if bx is not None and by is not None and bx.value is not None and by.value is not None:
            points.append(Point(f"base model {model} (before)", bx.value, by.value, bx.ci_low, bx.ci_high, by.ci_low,
                                by.ci_high, "#777777", hollow=True))
    for e in board.of(concept):
        x, y = e.results.metrics.get(ex.key), e.results.metrics.get(ry.key)
        if x is None or y is None or _after(e, ex.key) is None or _after(e, ry.key) is None:
            continue
        points.append(Point(e.label, x.after.value, y.after.value, x.after.ci_low, x.after.ci_high, y.after.ci_low,
                            y.after.ci_high, e.colour))
    if not points:
        return None
    return scatter_svg(points, f"{ex.key} {ex.arrow} (erasure)", f"{ry.key} {ry.arrow} (retention)",
                       f"{concept}: erasure vs retention", x_rate=ex.rate, y_rate=ry.rate,
                       plot_id=f"scatter-{slug(concept)}")


def probe_bars(board: Board, concept: str) -> str | None:
    """Each probe's value per run (bars with CIs), the chance floor dashed."""
    keys = board.probe_keys(concept)
    runs = [e for e in board.of(concept) if e.results.probes is not None]
    if not keys or not runs:
        return None
    values, chance = {}, {}
    rate = True
    for s, e in enumerate(runs):
        for g, key in enumerate(keys):
            pe = e.results.probes.results.get(key)
            if pe is None:
                continue
            p = pe.after
            values[(s, g)] = Bar(_finite(p.value), p.ci_low, p.ci_high)
            if p.chance is not None:
                chance.setdefault(g, p.chance)
            if p.scoring.get("rule") == "clip_score":
                rate = False
    return bars_svg(keys, [(e.label, e.colour) for e in runs], values, chance, f"{concept}: probe recovery",
                    "recovery (share showing the concept)" if rate else "probe value", rate=rate,
                    plot_id=f"probes-{slug(concept)}")


# -- HTML -------------------------------------------------------------------------------------------------
HOW_TO_READ = ("Each cell: the value after erasure [95 % percentile bootstrap interval over the n images scored] "
               "n, and Δ = after − before (base model). ↑/↓: the better direction. Erasure metrics are shown "
               "beside retention metrics; there is no composite score (ERR, where present, is the metric of that "
               "name and is labelled composite). ★: on the Pareto front of the plotted pair — no other setting is "
               "at least as good on both and better on one, on point values; overlapping intervals mean the order "
               "is not established. Probe values are recovery rates with their scoring rule's chance floor; the "
               "verdict tests each probe against the standard prompt (see the per-run report).")

_CSS = """body{font-family:sans-serif;margin:1.5em;color:#222}table{border-collapse:collapse;margin:.5em 0 1em}
td,th{border:1px solid #ccc;padding:3px 7px;text-align:left;font-size:13px;vertical-align:top}
th.erasure{background:#fde8e0}th.retention{background:#e0f0fa}th.composite,th.other{background:#eee}
tr.base td{color:#555;font-style:italic}.plots{display:flex;flex-wrap:wrap;gap:1.5em;align-items:flex-start}
small{color:#555}code{font-size:12px}"""


def _html_table(header: list[str], rows: list[list[str]], classes: list[str] | None = None,
                row_classes: list[str] | None = None, table_class: str = "") -> str:
    esc = html.escape
    classes = classes or [""] * len(header)
    head = "".join(f'<th class="{c}">{esc(h)}</th>' for h, c in zip(header, classes, strict=True))
    body = "".join(f'<tr class="{(row_classes or [""] * len(rows))[i]}">' + "".join(f"<td>{esc(c)}</td>" for c in r)
                   + "</tr>" for i, r in enumerate(rows))
    return f'<table class="{table_class}"><tr>{head}</tr>{body}</table>'


def _report_href(e: Entry, at: Path) -> str | None:
    """The run's report.html relative to the folder ``at``, None when it has none."""
    inside = e.path.parent / "report.html"
    if not e.path.is_absolute() and (at / inside).is_file():  # an export: paths are relative to it
        return inside.as_posix()
    if inside.is_file():
        return Path(os.path.relpath(inside.resolve(), at)).as_posix()
    return None


def to_html(board: Board, title: str = "eval-learn leaderboard", at: Path | None = None) -> str:
    """The page; ``at``: the folder it is written to (links to the runs' reports are relative to it)."""
    esc = html.escape
    parts = [f"<!doctype html><html><head><meta charset=\"utf-8\"><title>{esc(title)}</title>"
             f"<style>{_CSS}</style></head><body><h1>{esc(title)}</h1>",
             f"<p>{len(board.entries)} runs · {len(board.concepts())} concepts · sources: "
             f"{esc(', '.join(dict.fromkeys(e.source for e in board.entries)))}</p>",
             f"<p><small>{esc(HOW_TO_READ)}</small></p>"]
    parts += [f"<p><b>Note:</b> {esc(n)}</p>" for n in board.notes]
    for concept in board.concepts():
        cols = board.columns(concept)
        header, rows = concept_rows(board, concept)
        n_base = sum(1 for r in rows if r[0].startswith("base model "))
        parts.append(f'<section class="concept" id="concept-{esc(slug(concept))}"><h2>{esc(concept)}</h2>')
        plots = [p for p in (scatter(board, concept), probe_bars(board, concept)) if p]
        if plots:
            parts.append('<div class="plots">' + "".join(plots) + "</div>")
        parts.append(_html_table(header, rows, ["", *[c.aspect for c in cols], "", ""],
                                 ["base"] * n_base + [""] * (len(rows) - n_base), "board"))
        ph, pr = probe_rows_text(board, concept)
        if ph:
            parts.append("<h3>Probes</h3>" + _html_table(ph, pr, table_class="probes"))
        parts.append("</section>")
    parts.append("<h2>Runs</h2>" + _html_table(
        ["run", "spec", "technique", "params", "concept", "model", "seed", "source", "results.json"],
        [[e.results.run.name, e.spec, e.technique, json.dumps(e.results.technique.params, default=str), e.concept,
          e.model, str(e.seed), e.source, str(e.path)] for e in board.entries], table_class="runs"))
    if at is not None:  # each run's own report, where it has one, by a path relative to the page
        links = [(e.results.run.name, href) for e in board.entries if (href := _report_href(e, Path(at)))]
        if links:
            parts.append("<p>Per-run reports (images, probe grids, the resolved config): " + " · ".join(
                f'<a href="{esc(href)}">{esc(name)}</a>' for name, href in links) + "</p>")
    parts.append("</body></html>")
    return "\n".join(parts)


# -- Markdown ----------------------------------------------------------------------------------------------
def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def md_table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(map(_md_cell, header)) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(map(_md_cell, r)) + " |" for r in rows]
    return "\n".join(lines)


def to_markdown(board: Board, plots: dict[str, list[str]] | None = None,
                title: str = "eval-learn leaderboard") -> str:
    """The tables; ``plots`` (concept -> SVG file names relative to the Markdown file) are linked."""
    out = [f"# {title}", "", f"{len(board.entries)} runs · {len(board.concepts())} concepts", "", HOW_TO_READ, ""]
    out += [f"> Note: {n}" for n in board.notes]
    for concept in board.concepts():
        out += ["", f"## {concept}", ""]
        for name in (plots or {}).get(concept, []):
            out.append(f"![{concept}]({name})")
        header, rows = concept_rows(board, concept)
        out += ["", md_table(header, rows)]
        ph, pr = probe_rows_text(board, concept)
        if ph:
            out += ["", "### Probes", "", md_table(ph, pr)]
    out += ["", "## Runs", "", md_table(["run", "spec", "technique", "concept", "model", "seed", "source"],
                                        [[e.results.run.name, e.spec, e.technique, e.concept, e.model, str(e.seed),
                                          e.source] for e in board.entries])]
    return "\n".join(out) + "\n"


FORMATS = ("html", "csv", "md")


def parse_formats(text: str, who: str = WHO) -> list[str]:
    wanted = [f.strip().lower() for f in text.split(",") if f.strip()]
    bad = [f for f in wanted if f not in FORMATS]
    if bad or not wanted:
        raise UserError(f"{who}: --format {text!r}: choose from {', '.join(FORMATS)} (comma-separated)")
    return list(dict.fromkeys(wanted))


def write(board: Board, out: Path, formats: list[str], title: str = "eval-learn leaderboard") -> list[Path]:
    """Write the chosen formats into ``out``: leaderboard.html, leaderboard.csv, leaderboard.md
    (with its plots under plots/). Returns the files written."""
    from ..store import atomic_write_bytes

    out = Path(out)
    written = []
    if "html" in formats:
        atomic_write_bytes(out / "leaderboard.html", to_html(board, title, out.resolve()).encode())
        written.append(out / "leaderboard.html")
    if "csv" in formats:
        atomic_write_bytes(out / "leaderboard.csv", to_csv(board).encode())
        written.append(out / "leaderboard.csv")
    if "md" in formats:
        plots: dict[str, list[str]] = {}
        for concept in board.concepts():
            for kind, svg in (("scatter", scatter(board, concept)), ("probes", probe_bars(board, concept))):
                if svg is None:
                    continue
                name = f"plots/{kind}-{slug(concept)}.svg"
                atomic_write_bytes(out / name, svg.encode())
                written.append(out / name)
                plots.setdefault(concept, []).append(name)
        atomic_write_bytes(out / "leaderboard.md", to_markdown(board, plots, title).encode())
        written.append(out / "leaderboard.md")
    return written


# -- the console --------------------------------------------------------------------------------------------
def console_tables(board: Board) -> list:
    """One rich table per concept (value and interval on two lines, so it fits 80 columns)."""
    from rich.table import Table

    tables = []
    for concept in board.concepts():
        header, rows = concept_rows(board, concept)
        t = Table(title=f"{concept}", caption="value [95% CI] n Δ-to-base · ★ Pareto front of the plotted pair",
                  caption_justify="left")
        for i, h in enumerate(header):
            t.add_column(h, justify="left" if i == 0 else "right", overflow="fold")
        for r in rows:
            t.add_row(r[0], *[c.replace(" [", "\n[").replace(" n=", "\nn=") for c in r[1:]])
        tables.append(t)
    return tables
