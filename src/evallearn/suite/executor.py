"""Running a suite's cells: :func:`run_cell` (one cell, in any process), the :class:`Executor`
protocol, the in-process :class:`LocalExecutor`, and :func:`get_executor` (``local`` or ``ray``,
the latter from :mod:`evallearn.suite.ray_executor`, imported only when asked for).

A cell is an ordinary run (:func:`evallearn.runner.run`) into the suite's output folder, so the
run lock, the atomic writes and the shared caches (``_base/``, ``_techniques/``) keep it correct
whoever runs it. A cell whose run directory already holds ``results.json`` is not run again
(``cached``); a cell that raises is ``failed`` with a one-line reason (the traceback is written
to ``<run dir>/error.log``) and the others go on. Ctrl-C is not a failure: it stops the suite,
and a rerun resumes (finished cells are cached, the cut one resumes inside its run directory).
"""

from __future__ import annotations

import sys
import traceback
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

from ..errors import UserError
from .cells import CACHED, DONE, FAILED, Cell, CellOutcome

#: executors ``--executor`` accepts
EXECUTORS = ("local", "ray")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split("\n")[:1]).strip()
    if isinstance(exc, UserError):
        return text or "bad input"
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def run_cell(config_json: dict[str, Any]) -> CellOutcome:
    """Run one cell from its config as plain JSON (picklable: this is what every executor calls,
    in this process or on a worker). ``cached`` when its run directory already holds
    results.json, ``failed`` (one line; traceback in ``<run dir>/error.log``) on any exception
    but an interrupt, else ``done``. Writes report.html beside results.json, as ``eval-learn run``
    does."""
    from ..config import parse_config
    from ..report.html import write_report
    from ..runner import prepare, run
    from ..store import atomic_write_bytes

    name = str(config_json.get("name", "?")) if isinstance(config_json, dict) else "?"
    run_dir: Path | None = None
    try:
        cfg = parse_config(config_json, f"cell '{name}'")
        run_dir = prepare(cfg).run_dir
        if (run_dir / "results.json").is_file():
            return CellOutcome(name, CACHED, str(run_dir), None)
        run(cfg, report=write_report)
        stale = run_dir / "error.log"
        if stale.exists():
            stale.unlink()
        return CellOutcome(name, DONE, str(run_dir), None)
    except Exception as exc:  # a failing cell is reported; the suite goes on
        line = _one_line(exc)
        if run_dir is not None and not isinstance(exc, UserError):
            try:
                atomic_write_bytes(run_dir / "error.log", traceback.format_exc().encode())
                line += f" (traceback: {run_dir / 'error.log'})"
            except OSError:
                pass
        return CellOutcome(name, FAILED, None if run_dir is None else str(run_dir), line)


class SuiteProgress:
    """The suite's own progress: one line when a cell starts and one when it ends (``done``/
    ``cached``/``failed``), with the count, rate and time left over the cells computed so far
    (cached cells count as done but not towards the rate). Each cell's run prints its own
    progress (bars in a terminal, plain lines prefixed by the cell id elsewhere).
    ``on_finish(outcome)`` is called after each cell (``bench`` rewrites suite.json there)."""

    def __init__(self, name: str, total: int, stream=None,
                 on_finish: Callable[[CellOutcome], None] | None = None) -> None:
        from ..progress import PlainProgress

        self.name = name
        self.total = total
        self.on_finish = on_finish
        self.outcomes: list[CellOutcome] = []
        self._p = PlainProgress(f"suite {name}", interval=0.0, stream=stream)
        self._task = self._p.add_task("cells", total=total, info="")

    def _write(self, line: str) -> None:
        stream = self._p.stream or sys.stderr
        stream.write(line + "\n")
        stream.flush()

    def start(self, cell: Cell) -> None:
        done = len(self.outcomes)
        self._write(f"suite {self.name} · cell {done + 1}/{self.total}: {cell.id} (spec {cell.spec_hash})")

    def finish(self, outcome: CellOutcome) -> None:
        self.outcomes.append(outcome)
        task = self._p.tasks[self._task]
        if outcome.status == CACHED:  # not work done now: kept out of the rate
            task.start_completed += 1
        info = f"{outcome.cell_id} {outcome.status}"
        if outcome.error:
            info += f": {outcome.error}"
        self._p.update(self._task, advance=1, info=info)
        if self.on_finish is not None:
            self.on_finish(outcome)


class Executor(Protocol):
    """Runs cells and reports each through ``progress`` (:class:`SuiteProgress`:
    ``start(cell)`` when it begins, ``finish(outcome)`` when it ends; may be ``None``)."""

    def run(self, cells: Sequence[Cell], progress: SuiteProgress | None) -> list[CellOutcome]: ...


class LocalExecutor:
    """One cell after another in this process."""

    def run(self, cells: Sequence[Cell], progress: SuiteProgress | None = None) -> list[CellOutcome]:
        out = []
        for cell in cells:
            if progress is not None:
                progress.start(cell)
            outcome = run_cell(cell.config_json())
            outcome.cell_id = cell.id
            out.append(outcome)
            if progress is not None:
                progress.finish(outcome)
        return out


def get_executor(name: str, address: str | None = None) -> Executor:
    """``local`` (this process) or ``ray`` (:class:`evallearn.suite.ray_executor.RayExecutor`,
    ``address`` or the environment's; ray is optional)."""
    if name == "local":
        if address:
            raise UserError("--address: only the ray executor takes an address")
        return LocalExecutor()
    if name == "ray":
        # Loaded by name, like an optional plugin: ray_executor builds on run_cell and SuiteProgress
        # here, so a static import back to it would make the two modules import each other.
        import importlib

        try:
            module = importlib.import_module(f"{__package__}.ray_executor")
        except ModuleNotFoundError as exc:
            if exc.name in ("ray", f"{__package__}.ray_executor"):
                raise UserError("--executor ray: ray is not installed here (pip install 'eval-learn[ray]')") from None
            raise
        return module.RayExecutor(address)
    raise UserError(f"--executor: unknown '{name}'; choose one of {', '.join(EXECUTORS)}")
