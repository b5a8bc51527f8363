"""Rich progress bars for long loops (generation, technique training, attacks).

    with progress_bar("ESD training", total=steps) as advance:
        for step in range(steps):
            ...
            advance(1, loss=f"{loss:.4f}")
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

_console = Console(stderr=True)


def new_progress() -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    TimeRemainingColumn(), TextColumn("{task.fields[info]}"), console=_console, transient=True)


@contextmanager
def progress_bar(description: str, total: int) -> Iterator[Callable[..., None]]:
    with new_progress() as prog:
        task = prog.add_task(description, total=total, info="")

        def advance(n: int = 1, **info) -> None:
            prog.update(task, advance=n, info=" ".join(f"{k}={v}" for k, v in info.items()))

        yield advance
