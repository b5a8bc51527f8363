"""Progress for long loops (generation, technique training, attacks, probes).

In a terminal: rich progress bars. Anywhere else (CI, ``nohup``, stderr redirected to a log
file): plain lines on stderr, one when a task starts, then at most one every
``EVALLEARN_PROGRESS_SECONDS`` seconds (default 10), and one when it ends, each naming the
run, the task, items done of total, the rate and the time left::

    quickstart · generate (after): 96/512 (19%) · 3.2/s · 30s elapsed · ~2m10s left

    with progress_bar("ESD training", total=steps) as advance:
        for step in range(steps):
            ...
            advance(1, loss=f"{loss:.4f}")
"""

from __future__ import annotations

import os
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)
DEFAULT_INTERVAL_S = 10.0


def quiet_library_bars() -> None:
    """Silence the progress bars diffusers, transformers and the hub draw on their own
    ("Loading pipeline components", "Loading weights", "Writing model shards"): they would
    interleave with ours and fill log files. Libraries not imported yet read the environment
    variable; those already imported are switched off directly."""
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    for name in ("diffusers.utils.logging", "transformers.utils.logging"):
        module = sys.modules.get(name)
        if module is not None and hasattr(module, "disable_progress_bar"):
            module.disable_progress_bar()
    hub = sys.modules.get("huggingface_hub.utils")
    if hub is not None and hasattr(hub, "disable_progress_bars"):
        hub.disable_progress_bars()


def interval_s() -> float:
    """Seconds between plain progress lines: ``EVALLEARN_PROGRESS_SECONDS`` (default 10)."""
    try:
        value = float(os.environ.get("EVALLEARN_PROGRESS_SECONDS", DEFAULT_INTERVAL_S))
    except ValueError:
        return DEFAULT_INTERVAL_S
    return max(value, 0.05) if value == value else DEFAULT_INTERVAL_S  # NaN -> default


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


@dataclass
class _Task:
    description: str
    total: float | None
    completed: float = 0.0
    start_completed: float = 0.0
    info: str = ""
    started: float = field(default_factory=lambda: time.monotonic())
    last_print: float = 0.0
    finished: bool = False


class PlainProgress:
    """The part of :class:`rich.progress.Progress` the runner uses, printing plain lines."""

    def __init__(self, label: str = "", interval: float | None = None, stream=None) -> None:
        self.label = label
        self.interval = interval_s() if interval is None else interval
        self.stream = stream
        self.tasks: dict[int, _Task] = {}

    def __enter__(self) -> PlainProgress:
        return self

    def __exit__(self, *exc) -> None:
        if exc[0] is None:
            for task in self.tasks.values():
                if not task.finished:
                    self._print(task)

    def add_task(self, description: str, total: float | None = None, completed: float = 0, **fields: Any) -> int:
        task_id = len(self.tasks)
        task = self.tasks[task_id] = _Task(description, total, float(completed), float(completed),
                                           str(fields.get("info", "") or ""))
        self._print(task)
        task.finished = total is not None and task.completed >= total
        return task_id

    def advance(self, task_id: int, advance: float = 1) -> None:
        self.update(task_id, advance=advance)

    def update(self, task_id: int, *, advance: float | None = None, completed: float | None = None,
               total: float | None = None, **fields: Any) -> None:
        task = self.tasks[task_id]
        if total is not None:
            task.total = total
        if completed is not None:
            task.completed = float(completed)
        if advance:
            task.completed += advance
        if "info" in fields:
            task.info = str(fields["info"] or "")
        done = task.total is not None and task.completed >= task.total
        if done and not task.finished:
            self._print(task)
            task.finished = True
        elif not done and time.monotonic() - task.last_print >= self.interval:
            self._print(task)

    def line(self, task: _Task) -> str:
        elapsed = time.monotonic() - task.started
        parts = []
        count = f"{task.completed:g}"
        if task.total is not None:
            count += f"/{task.total:g}"
            if task.total:
                count += f" ({100 * task.completed / task.total:.0f}%)"
        parts.append(count)
        new = task.completed - task.start_completed
        if new > 0 and elapsed > 0:
            rate = new / elapsed
            parts.append(f"{rate:.3g}/s" if rate >= 1 else f"{1 / rate:.3g}s each")
        parts.append(f"{_duration(elapsed)} elapsed")
        if new > 0 and task.total is not None and task.completed < task.total:
            parts.append(f"~{_duration((task.total - task.completed) * elapsed / new)} left")
        if task.info:
            parts.append(task.info)
        head = f"{self.label} · {task.description}" if self.label else task.description
        return f"{head}: " + " · ".join(parts)

    def _print(self, task: _Task) -> None:
        task.last_print = time.monotonic()
        stream = self.stream or sys.stderr
        stream.write(self.line(task) + "\n")
        stream.flush()


def is_terminal() -> bool:
    return _console.is_terminal


def new_progress(label: str = "") -> Progress | PlainProgress:
    """Rich bars in a terminal, plain progress lines (prefixed by ``label``, e.g. the run's
    name) anywhere else."""
    if not is_terminal():
        return PlainProgress(label)
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=_console, transient=True)


@contextmanager
def working(what: str) -> Iterator[None]:
    """For a step with no count to show (``validate`` on a large config): a spinner in a
    terminal; elsewhere a line ``<what>: still working (12s)`` every :func:`interval_s` seconds
    while it lasts (nothing if it ends sooner)."""
    if is_terminal():
        with _console.status(what):
            yield
        return
    stop = threading.Event()
    started = time.monotonic()

    def beat() -> None:
        while not stop.wait(interval_s()):
            sys.stderr.write(f"{what}: still working ({_duration(time.monotonic() - started)})\n")
            sys.stderr.flush()

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join()


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    with new_progress() as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, **info) -> None:
            prog.update(task, advance=n, info=" ".join(f"{k}={v}" for k, v in info.items()))

        yield advance
