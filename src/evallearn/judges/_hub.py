"""Resolve a judge's model: a local folder, or a hub id already in the Hugging Face cache."""

from __future__ import annotations

from pathlib import Path

from ..errors import UserError
from ..models.hub import cached_snapshot, is_local


def model_folder(ref: str, judge: str, what: str = "model") -> Path:
    path = Path(ref).expanduser()
    if is_local(ref):
        if not (path / "config.json").is_file():
            raise UserError(f"judge '{judge}': {what} folder {path} not found or has no config.json; "
                            f"provide a folder saved with save_pretrained")
        return path
    folder = cached_snapshot(ref)
    if folder is None:
        raise UserError(f"judge '{judge}': {what} '{ref}' is not in the local Hugging Face cache; run "
                        f"`hf download {ref}` where there is network, or give a local folder")
    return folder
