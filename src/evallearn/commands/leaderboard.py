"""``eval-learn leaderboard``: technique settings × concepts × metrics from run directories and
folders of runs (suites, exports pulled from the Hub), written as one static HTML page, CSV and
Markdown (:mod:`evallearn.report.leaderboard`), with the tables printed per concept."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def leaderboard(
    paths: Annotated[list[Path], typer.Argument(help="run folders, results.json files, or folders holding runs "
                                                     "(suites, pulled exports); _base and other _ folders skipped")],
    out: Annotated[Path, typer.Option("--out", help="folder the files are written to")] = Path("leaderboard"),
    formats: Annotated[str, typer.Option("--format", help="comma-separated: html, csv, md")] = "html,csv,md",
    erasure: Annotated[str | None, typer.Option(help="metric key on the scatter's x axis (default: the first "
                                                      "erasure metric, e.g. ua)")] = None,
    retention: Annotated[str | None, typer.Option(help="metric key on the scatter's y axis (default: the first "
                                                        "retention metric, e.g. ira)")] = None,
    title: Annotated[str, typer.Option(help="the page's title")] = "eval-learn leaderboard",
) -> None:
    """A leaderboard of runs: erasure beside retention with CIs and n, probe verdicts, plots; HTML, CSV, Markdown."""
    from rich.console import Console

    from ..report.leaderboard import console_tables, load_board, parse_formats, write

    wanted = parse_formats(formats)
    board = load_board(paths, erasure, retention)
    console, err = Console(), Console(stderr=True)
    for table in console_tables(board):
        console.print(table)
    files = write(board, out, wanted, title)
    for note in board.notes:
        err.print(note, markup=False, highlight=False, soft_wrap=True)
    for path in files:
        if path.suffix != ".svg":
            console.print(f"wrote {path}", markup=False, highlight=False, soft_wrap=True)


#: the ``leaderboard`` entry point of the ``evallearn.cli`` group: a one-command app
leaderboard_app = typer.Typer()
leaderboard_app.command("leaderboard")(leaderboard)
