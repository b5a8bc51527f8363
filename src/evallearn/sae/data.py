"""Prompt corpora the SAEs are trained on."""

from __future__ import annotations

from pathlib import Path


def read_prompts(path: str | Path) -> list[str]:
    """One prompt per line (``.txt``) or a CSV with a ``prompt`` column."""
    from ..errors import UserError

    path = Path(path)
    if not path.is_file():
        raise UserError(f"sae: prompt file {path} does not exist")
    if path.suffix.lower() == ".csv":
        import csv

        with path.open(newline="") as f:
            rows = list(csv.DictReader(f))
        if not rows or "prompt" not in rows[0]:
            raise UserError(f"sae: {path} has no 'prompt' column")
        prompts = [r["prompt"] for r in rows if r["prompt"]]
    else:
        prompts = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not prompts:
        raise UserError(f"sae: {path} holds no prompts")
    return prompts
