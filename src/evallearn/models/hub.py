"""Resolving a model or dataset reference: a local folder, or a Hugging Face hub id.

A reference names a local folder when that path exists or when it does not have the
``owner/name`` shape of a hub id; otherwise it is a hub id, looked up in the local Hugging Face
cache first and downloaded only where the caller allows it.
"""

from __future__ import annotations

from pathlib import Path


def is_local(ref: str) -> bool:
    """Whether ``ref`` names a local path rather than a hub id ``owner/name``."""
    return Path(ref).expanduser().exists() or ref.count("/") != 1


def cached_snapshot(ref: str, repo_type: str = "model", allow_patterns: list[str] | None = None) -> Path | None:
    """The snapshot folder of hub id ``ref`` in the local Hugging Face cache, or None when it is
    not there (nothing is downloaded)."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(ref, repo_type=repo_type, local_files_only=True, allow_patterns=allow_patterns))
    except Exception:
        return None


def download_snapshot(ref: str, repo_type: str = "model", allow_patterns: list[str] | None = None) -> Path:
    """Download (or reuse) the snapshot of hub id ``ref``; the hub's exceptions propagate."""
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(ref, repo_type=repo_type, allow_patterns=allow_patterns))
