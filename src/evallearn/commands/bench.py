"""``eval-learn bench SUITE.yaml``: run a benchmark suite (docs/suites.md).

The suite expands into cells (:mod:`evallearn.suite.spec`), every one checked by ``prepare()``
before anything runs, and each cell is an ordinary run into the suite's folder. ``--dry-run``
lists the cells with their spec hashes, how many images each would generate and how many are
already stored, reading the stores only (no weights are loaded, built or downloaded).

Exit codes: 0 every cell done (or cached); 1 some cells failed (each reported, the others ran);
2 bad input (the suite file, a key, a technique, concept or parameter, a duplicate cell, an
executor that cannot start), before any cell runs; 130 interrupted (rerun to resume).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer

#: exit code when some cells failed (bad input is 2, an interrupt 130)
SOME_FAILED = 1
SUITE_JSON = "suite.json"
SUITE_SCHEMA = 1


def _stored(store_dir: Path, keys) -> int:
    images = store_dir / "images"
    return sum(1 for k in keys if (images / f"{k}.png").exists())


def dry_run_rows(planned) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Per cell: spec, after images (to generate / stored), base images it asks for (stored),
    status; and the suite's totals, counting each shared base image once."""
    from ..runner import base_dir

    rows = []
    base_sets: dict[Path, set[str]] = {}
    for cell, plan, _ in planned:
        cfg = plan.config
        keys = [r.key for r in plan.requests]
        same_model = (cfg.base_model or cfg.model) == cfg.model and not plan.technique.changes_model
        base = cfg.base_metrics and bool(plan.metrics) and not same_model
        bdir = base_dir(plan) if base else None
        if bdir is not None:
            base_sets.setdefault(bdir, set()).update(keys)
        done = (plan.run_dir / "results.json").is_file()
        probes_done = len(list((plan.run_dir / "probes" / "results").glob("*/spec.json")))
        rows.append({"cell": cell.id, "spec": cell.spec_hash, "images": len(keys),
                     "stored": _stored(plan.run_dir, keys),
                     "base": len(keys) if bdir is not None else 0,
                     "base_stored": _stored(bdir, keys) if bdir is not None else 0,
                     "probes": len(cfg.probes), "probes_stored": probes_done,
                     "status": "done" if done else ("partial" if plan.run_dir.exists() else "new"),
                     "built": plan.model.built})
    base_total = sum(len(s) for s in base_sets.values())
    base_stored = sum(_stored(d, s) for d, s in base_sets.items())
    totals = {"cells": len(rows), "to_run": sum(r["status"] != "done" for r in rows),
              "images": sum(r["images"] for r in rows), "stored": sum(r["stored"] for r in rows),
              "base_unique": base_total, "base_stored": base_stored}
    return rows, totals


def _suite_record(suite, source: str, planned, status: dict[str, str], errors: dict[str, str]) -> dict[str, Any]:
    from .. import __version__
    from ..suite.spec import suite_hash

    out = []
    for cell, _, setting in planned:
        cfg = cell.config
        row = {"id": cell.id, "spec_hash": cell.spec_hash, "run_dir": cell.run_dir.name,
               "status": status[cell.id], "model": cfg.model, "technique": cfg.technique.name,
               "setting": {"technique": setting["technique"], "grid": setting["grid"]},
               "concept": cfg.concept.name, "seed": cfg.seed}
        if cell.id in errors:
            row["error"] = errors[cell.id]
        out.append(row)
    return {"schema_version": SUITE_SCHEMA, "name": suite.name, "spec_hash": suite_hash(suite),
            "source": source, "eval_learn": __version__, "cells": out}


def _check_folder(folder: Path, name: str) -> None:
    """Refuse a folder that holds another suite's suite.json (two suites would overwrite it)."""
    import json

    from ..errors import UserError

    path = folder / SUITE_JSON
    if not path.is_file():
        return
    try:
        other = json.loads(path.read_text(encoding="utf-8")).get("name")
    except (OSError, ValueError, AttributeError):
        raise UserError(f"{path}: not a suite record; move it away or choose another output_dir") from None
    if other != name:
        raise UserError(f"{path}: the folder holds suite '{other}', not '{name}'; choose another output_dir")


def bench(
    suite_file: Annotated[Path, typer.Argument(metavar="SUITE", help="the suite file (YAML or JSON)")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="list the cells, their spec hashes and image "
                                                            "counts; run nothing, load no weights")] = False,
    executor: Annotated[str, typer.Option("--executor", help="local (this process) or ray")] = "local",
    address: Annotated[str | None, typer.Option("--address", help="Ray cluster address (default: "
                                                                  "$RAY_ADDRESS, else a local cluster)")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="override a suite key: --set seeds=[0,1]")] = None,
) -> None:
    """Run a benchmark suite: models × techniques (and grids of their params) × concepts × seeds.
    Exit 1 if some cells failed, 2 on bad input."""
    from rich.console import Console
    from rich.table import Table

    from ..errors import UserError
    from ..models.loading import no_fetch
    from ..progress import working
    from ..store import atomic_write_json
    from ..suite.cells import CACHED, DONE, FAILED, PENDING
    from ..suite.executor import EXECUTORS, SuiteProgress, get_executor
    from ..suite.spec import load_suite, plan_cells

    out, err = Console(), Console(stderr=True)
    if not out.is_terminal:  # a log file: do not cut cell ids to 80 columns
        out = Console(width=200)
    source = str(suite_file)
    suite = load_suite(suite_file, set_ or [])
    if executor not in EXECUTORS:
        raise UserError(f"--executor: unknown '{executor}'; choose one of {', '.join(EXECUTORS)}")
    folder = Path(suite.folder)
    _check_folder(folder, suite.name)
    if dry_run:
        with no_fetch(), working(f"bench --dry-run {suite_file}"):
            planned = plan_cells(suite, source)
            rows, totals = dry_run_rows(planned)
        t = Table(title=f"suite {suite.name}: {totals['cells']} cells in {folder}")
        probes = any(r["probes"] for r in rows)
        cols = ["cell", "spec", "images", "stored", "base images", "base stored"] + (["probes done"] if probes else [])
        for col in [*cols, "status"]:
            t.add_column(col, justify="left" if col in ("cell", "spec", "status") else "right")
        for r in rows:
            extra = [f"{r['probes_stored']}/{r['probes']}"] if probes else []
            t.add_row(r["cell"], r["spec"] if r["built"] else "(model not built)", str(r["images"]),
                      str(r["stored"]), str(r["base"]), str(r["base_stored"]), *extra, r["status"])
        out.print(t)
        out.print(f"{totals['to_run']} of {totals['cells']} cells to run · after images: {totals['images']} "
                  f"({totals['stored']} stored) · base-model images: {totals['base_unique']} unique, shared by "
                  f"the suite ({totals['base_stored']} stored)", soft_wrap=True)
        return

    with working(f"bench {suite_file}: checking {suite.name}"):
        planned = plan_cells(suite, source)
    cells = [p.cell for p in planned]
    runner = get_executor(executor, address)  # a missing ray or a dead address: exit 2, nothing run
    status = {c.id: (DONE if (c.run_dir / "results.json").is_file() else PENDING) for c in cells}
    errors: dict[str, str] = {}
    record = folder / SUITE_JSON

    def save() -> None:
        atomic_write_json(record, _suite_record(suite, source, planned, status, errors))

    def on_finish(outcome) -> None:
        status[outcome.cell_id] = DONE if outcome.status == CACHED else outcome.status
        if outcome.error:
            errors[outcome.cell_id] = outcome.error
        else:
            errors.pop(outcome.cell_id, None)
        save()

    folder.mkdir(parents=True, exist_ok=True)
    save()
    progress = SuiteProgress(suite.name, len(cells), on_finish=on_finish)
    outcomes = runner.run(cells, progress)
    seen = {o.cell_id for o in progress.outcomes}
    for o in outcomes:  # an executor that did not report through progress
        if o.cell_id not in seen:
            on_finish(o)
    counts = {s: sum(o.status == s for o in outcomes) for s in (DONE, CACHED, FAILED)}
    t = Table(title=f"suite {suite.name}")
    for col in ("cell", "status", "run dir"):
        t.add_column(col)
    for o in outcomes:
        t.add_row(o.cell_id, o.status, str(o.run_dir or ""))
    out.print(t)
    out.print(f"{counts[DONE]} done, {counts[CACHED]} cached (finished earlier), {counts[FAILED]} failed · "
              f"{record}", soft_wrap=True)
    from .. import registry

    if "leaderboard" in registry.commands:  # the table and plots of the suite (a command of its own)
        out.print(f"leaderboard: eval-learn leaderboard {folder}", soft_wrap=True)
    for o in outcomes:
        if o.status == FAILED:
            err.print(f"failed: {o.cell_id}: {o.error}", markup=False, highlight=False, soft_wrap=True)
    if counts[FAILED]:
        raise typer.Exit(SOME_FAILED)


#: the ``bench`` entry point of the ``evallearn.cli`` group: a one-command app
bench_app = typer.Typer()
bench_app.command("bench")(bench)
