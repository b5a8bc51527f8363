"""``eval-learn push`` and ``eval-learn pull``: results as a Hugging Face Hub dataset repo.

``push RUN_OR_SUITE_DIR --repo OWNER/NAME`` builds the export folder
(:func:`evallearn.report.export.build_export`: the results table others load with ``datasets``,
the reports, the leaderboard, optionally the images, and a dataset card) and uploads it with
``huggingface_hub`` (``create_repo`` + ``upload_folder``, one commit); ``--dry-run`` builds it
and lists what would be uploaded. ``pull OWNER/NAME`` downloads a repo (``snapshot_download``)
so ``eval-learn leaderboard`` can put its runs beside yours. The token is huggingface_hub's own
(``HF_TOKEN`` or ``hf auth login``); nothing here stores one.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Annotated

import typer

from ..errors import UserError


def _hub_error(who: str, repo: str, exc: Exception) -> UserError:
    """One line for what the Hub or the network said."""
    name = type(exc).__name__
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else name
    hint = ""
    if "Token" in name or "401" in text or "403" in text:
        hint = "; log in with `hf auth login` or set HF_TOKEN to a token with write access"
    elif "404" in text or "NotFound" in name:
        hint = "; check the repo id (a dataset repo) and your access to it"
    return UserError(f"{who}: {repo}: {name}: {text}{hint}")


def _online(who: str) -> None:
    import os

    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        raise UserError(f"{who}: HF_HUB_OFFLINE is set, so the Hub cannot be reached; unset it"
                        + (" (or use --dry-run to list what would be uploaded)" if who == "push" else ""))


def _size(n: int) -> str:
    for unit in ("B", "kB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000
    return f"{n} B"


def push(
    path: Annotated[Path, typer.Argument(help="a run folder, or a folder of runs (a suite)")],
    repo: Annotated[str, typer.Option("--repo", help="the Hub dataset repo, OWNER/NAME")],
    images: Annotated[bool, typer.Option("--images", help="upload the images too (run, probe and base)")] = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="build the export and list what would be uploaded; "
                                                            "upload nothing")] = False,
    private: Annotated[bool, typer.Option("--private", help="create the repo private")] = False,
    out: Annotated[Path | None, typer.Option("--out", help="build the export in this folder and keep it "
                                                           "(default: a temporary folder)")] = None,
    message: Annotated[str | None, typer.Option("--message", help="the commit message")] = None,
) -> None:
    """Push runs to a Hugging Face Hub dataset repo: results table, reports, leaderboard, card (and --images)."""
    from rich.console import Console

    from ..report.export import build_export, check_repo

    check_repo(repo, "push")
    if not dry_run:
        _online("push")
    console = Console()
    with tempfile.TemporaryDirectory(prefix="eval-learn-push-") as tmp:
        export = build_export([path], out or Path(tmp) / "export", repo, images=images)
        listing = export.listing()
        for note in export.board.notes:
            Console(stderr=True).print(note, markup=False, highlight=False, soft_wrap=True)
        if dry_run:
            for name, size in listing:
                console.print(f"{size:>10}  {name}", markup=False, highlight=False, soft_wrap=True)
            total = sum(s for _, s in listing)
            console.print(f"dry run: {len(listing)} files, {_size(total)}, {len(export.board.entries)} runs would be "
                          f"uploaded to https://huggingface.co/datasets/{repo}" + (f"; export kept in {out}" if out
                                                                                    else ""),
                          markup=False, highlight=False, soft_wrap=True)
            return
        from huggingface_hub import HfApi

        api = HfApi()
        try:
            api.create_repo(repo, repo_type="dataset", private=private, exist_ok=True)
            info = api.upload_folder(folder_path=str(export.root), repo_id=repo, repo_type="dataset",
                                     commit_message=message or f"eval-learn push: {len(export.board.entries)} runs")
        except Exception as exc:  # HTTP, auth, network: one line, nothing local is lost
            raise _hub_error("push", repo, exc) from None
        url = getattr(info, "commit_url", None) or f"https://huggingface.co/datasets/{repo}"
        console.print(f"pushed {len(listing)} files ({len(export.board.entries)} runs) to {url}", markup=False,
                      highlight=False, soft_wrap=True)


def pull(
    repo: Annotated[str, typer.Argument(help="the Hub dataset repo, OWNER/NAME")],
    out: Annotated[Path | None, typer.Option("--out", help="folder to download into (default: hub/OWNER/NAME)")]
    = None,
    images: Annotated[bool, typer.Option("--images", help="download the images too")] = False,
    revision: Annotated[str | None, typer.Option(help="a branch, tag or commit")] = None,
) -> None:
    """Download results pushed with `eval-learn push`, for `eval-learn leaderboard` to put beside yours."""
    from rich.console import Console

    from ..report.export import check_repo
    from ..report.leaderboard import EXPORT_MANIFEST

    check_repo(repo, "pull")
    _online("pull")
    from huggingface_hub import snapshot_download

    target = out or Path("hub") / repo
    try:
        snapshot_download(repo_id=repo, repo_type="dataset", revision=revision, local_dir=str(target),
                          ignore_patterns=None if images else ["*.png", "*/images/*"])
    except Exception as exc:
        raise _hub_error("pull", repo, exc) from None
    if not (target / EXPORT_MANIFEST).is_file():
        raise UserError(f"pull: {repo} holds no {EXPORT_MANIFEST}: not a repo written by `eval-learn push` "
                        f"(downloaded into {target})")
    runs = sorted((target / "runs").glob("*/results.json"))
    Console().print(f"pulled {len(runs)} runs of {repo} into {target}; compare with yours: "
                    f"eval-learn leaderboard {target} <your runs>", markup=False, highlight=False, soft_wrap=True)


#: the ``push`` / ``pull`` entry points of the ``evallearn.cli`` group: one-command apps
push_app = typer.Typer()
push_app.command("push")(push)
pull_app = typer.Typer()
pull_app.command("pull")(pull)
