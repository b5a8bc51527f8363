"""A suite's cells: one cell is one ordinary run.

A :class:`Cell` is a run config (:class:`~evallearn.config.RunConfig`) with a readable id and the
spec hash of its run directory, so ``evallearn.runner.run(cell.config)`` writes the same
``<output_dir>/<name>-<spec hash>/`` a lone ``eval-learn run`` of that config would: every cell is
reproducible alone. A :class:`CellOutcome` is what running it gave.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig

#: a cell's status after the suite ran it
DONE, CACHED, FAILED = "done", "cached", "failed"
#: status of a cell not (yet) run, in ``suite.json``
PENDING = "pending"


@dataclass(frozen=True)
class Cell:
    """One run of a suite: ``id`` (readable, unique in the suite, also the run's name), its
    ``config`` and ``spec_hash`` (the hash that names its run directory, as ``eval-learn
    validate`` prints it)."""

    id: str
    config: RunConfig
    spec_hash: str

    @property
    def run_dir(self) -> Path:
        """``<output_dir>/<name>-<spec hash>``, where :func:`evallearn.runner.run` writes it."""
        return Path(self.config.output_dir) / f"{self.config.name}-{self.spec_hash}"

    def config_json(self) -> dict[str, Any]:
        """The config as plain JSON (what :func:`evallearn.suite.executor.run_cell` takes)."""
        return self.config.model_dump(mode="json")


@dataclass
class CellOutcome:
    """What running a cell gave: ``status`` is ``done`` (computed now), ``cached`` (its run
    directory already held results.json) or ``failed`` (``error``: one line saying why)."""

    cell_id: str
    status: str  # "done" | "cached" | "failed"
    run_dir: str | None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
