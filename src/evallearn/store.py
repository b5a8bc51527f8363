"""The run directory: resolved config, images by request hash, manifest, results, lock.

Layout of ``<output_dir>/<name>-<spec hash>/``::

    config.yaml      the resolved config (what was hashed)
    lock             held with flock while a run is alive (the kernel drops it on kill -9)
    images/<key>.png one PNG per generation request, written atomically
    images/<key>.nonfinite.json  beside the PNG of a request whose latents or image held NaN/inf
                     (the PNG then holds the image with those values set to 0; it is never scored)
    manifest.jsonl   append-only progress log
    results.json     written atomically when the run ends
    report.html

Images are the source of truth for resume: a request whose PNG exists is never generated
again, and judges always score the decoded PNG, so a resumed run scores exactly the bytes an
uninterrupted run would have scored.
"""

from __future__ import annotations

import fcntl
import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .errors import UserError


def _umask() -> int:
    """The process umask (read by setting and restoring it: there is no getter)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file and a rename, so a reader (or a crash)
    never sees a partial file. The file gets the mode any new file gets (0666 less the umask);
    ``mkstemp`` alone would leave it 0600."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=False, default=str) + "\n").encode())


class ImageStore:
    """Content addressed by request key. Safe for concurrent writers of identical content."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, key: str) -> Path:
        return self.root / f"{key}.png"

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, image: np.ndarray, nonfinite: dict[str, Any] | None = None) -> None:
        """Store ``image`` (uint8) for ``key``; ``nonfinite`` (what went wrong) flags it first."""
        import io

        if nonfinite is not None:
            self.flag(key, nonfinite)
        elif self.flag_path(key).exists():  # a finite image replaces a flagged one
            self.flag_path(key).unlink()
        buf = io.BytesIO()
        Image.fromarray(image).save(buf, format="PNG")
        atomic_write_bytes(self.path(key), buf.getvalue())

    def flag_path(self, key: str) -> Path:
        return self.root / f"{key}.nonfinite.json"

    def flag(self, key: str, info: dict[str, Any]) -> None:
        """Record that request ``key`` gave non-finite latents or pixels (written before its PNG,
        so a PNG without a flag is always a finite image)."""
        atomic_write_json(self.flag_path(key), info)

    def flagged(self, key: str) -> dict[str, Any] | None:
        """What :meth:`flag` recorded for ``key``, or None for a finite image."""
        path = self.flag_path(key)
        if not path.exists():
            return None
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return {"what": "unreadable flag file"}

    def get(self, key: str) -> np.ndarray:
        with Image.open(self.path(key)) as im:
            return np.asarray(im.convert("RGB"))

    def get_many(self, keys: list[str]) -> np.ndarray:
        return np.stack([self.get(k) for k in keys]) if keys else np.zeros((0, 1, 1, 3), np.uint8)


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.images = ImageStore(self.root / "images")
        self._lock_fh = None

    # -- lock ---------------------------------------------------------------------------
    def acquire(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / "lock", "a+")
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            raise UserError(
                f"run directory {self.root} is in use by another run (pid {holder}); "
                "wait for it to finish or change output_dir"
            ) from None
        fh.seek(0)
        fh.truncate()
        fh.write(str(os.getpid()))
        fh.flush()
        self._lock_fh = fh

    def release(self) -> None:
        if self._lock_fh is not None:
            fcntl.flock(self._lock_fh.fileno(), fcntl.LOCK_UN)
            self._lock_fh.close()
            self._lock_fh = None

    def __enter__(self) -> RunStore:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    # -- files --------------------------------------------------------------------------
    def log(self, event: str, **fields: Any) -> None:
        line = json.dumps({"time": round(time.time(), 3), "event": event, **fields}, default=str)
        with open(self.root / "manifest.jsonl", "a", encoding="utf-8") as fh:
            fh.write(line + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    def manifest(self) -> list[dict[str, Any]]:
        path = self.root / "manifest.jsonl"
        if not path.exists():
            return []
        events = []
        for line in path.read_text(encoding="utf-8").splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut by a crash
                continue
        return events

    def write_config(self, text: str) -> None:
        atomic_write_bytes(self.root / "config.yaml", text.encode())

    def write_results(self, results: dict[str, Any]) -> Path:
        path = self.root / "results.json"
        atomic_write_json(path, results)
        return path
