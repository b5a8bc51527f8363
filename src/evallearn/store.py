"""The run directory: resolved config, images by request hash, manifest, results, lock.

Layout of ``<output_dir>/<name>-<spec hash>/``::

    config.yaml      the resolved config (what was hashed)
    lock             held with flock while a run is alive (the kernel drops it on kill -9)
    images/<key>.png one PNG per generation request, written atomically
    images/.lock     byte-range locks, one per request key, while a process makes that image
    images/<key>.nonfinite.json  beside the PNG of a request whose latents or image held NaN/inf
                     (the PNG then holds the image with those values set to 0; it is never scored)
    manifest.jsonl   append-only progress log
    results.json     written atomically when the run ends
    report.html

Images are the source of truth for resume: a request whose PNG exists is never generated
again, and judges always score the decoded PNG, so a resumed run scores exactly the bytes an
uninterrupted run would have scored.

Many processes, on one machine or many sharing the output folder (suite cells on Ray, the shards
of one run), may write beside each other. Correctness never rests on a lock: every file is
written whole and renamed into place, and two writers of one image or cache entry write equal
content. Locks only keep work from being done twice: :class:`KeyLocks` (POSIX byte-range locks,
one byte per key in one file, honoured across machines on NFS) lets concurrent runs split the
shared base-model images (:meth:`ImageStore.fill`) and compute a cache entry once
(:meth:`evallearn.cache.Cache.get_or_compute`). Where a filesystem refuses locks, work may be
repeated, never corrupted.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
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


#: errors that mean "this filesystem does not do POSIX locks" (work may then be repeated)
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class KeyLocks:
    """Exclusive locks on string keys, each one byte of one lock file (``fcntl.lockf`` byte-range
    locks: released by the kernel when the holder dies, and honoured across machines on NFS).

    POSIX locks belong to a process, and closing any descriptor of the file drops all of the
    process's locks on it, so each process holds one :class:`KeyLocks` per file (:meth:`at`),
    opens the file while it holds a key there and closes it when it holds none. Taking a key
    this process already holds succeeds (counted); threads of one process do not exclude each
    other. A lock is advice that keeps work from being repeated; where the filesystem refuses
    locks every call succeeds unlocked."""

    _open: dict[tuple[int, str], KeyLocks] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._held: dict[int, int] = {}  # offset -> how many times this process took it
        self._busy = 0  # threads inside lockf() on the descriptor (it stays open for them)
        self._mutex = threading.Lock()

    @classmethod
    def at(cls, path: Path | str) -> KeyLocks:
        """The process's one :class:`KeyLocks` on ``path``."""
        key = (os.getpid(), os.path.realpath(path))  # one object per file, whatever path names it
        with cls._guard:
            if key not in cls._open:
                cls._open[key] = cls(Path(path))
            return cls._open[key]

    @staticmethod
    def offset(key: str) -> int:
        return int.from_bytes(hashlib.sha256(key.encode()).digest()[:4], "big") & 0x7FFFFFFF

    def _take(self, key: str, wait: bool) -> bool:
        off = self.offset(key)
        with self._mutex:
            if off in self._held:
                self._held[off] += 1
                return True
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            fd, self._busy = self._fd, self._busy + 1
        took = False
        try:  # outside the mutex: waiting for another process must not stop this one's threads
            fcntl.lockf(fd, fcntl.LOCK_EX if wait else fcntl.LOCK_EX | fcntl.LOCK_NB, 1, off, os.SEEK_SET)
            took = True
        except OSError as exc:
            if exc.errno in _NO_LOCKS or exc.errno == errno.EDEADLK:
                took = True  # no locks on this filesystem (or waiting would deadlock): go on unlocked
            elif exc.errno not in (errno.EAGAIN, errno.EACCES):  # (those: held by another process)
                raise
        finally:
            with self._mutex:
                self._busy -= 1
                if took:
                    self._held[off] = self._held.get(off, 0) + 1
                self._close_if_idle()
        return took

    def _close_if_idle(self) -> None:
        if not self._held and not self._busy and self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def try_lock(self, key: str) -> bool:
        """Take ``key`` if no other process holds it."""
        return self._take(key, wait=False)

    def lock(self, key: str) -> None:
        """Take ``key``, waiting while another process holds it."""
        self._take(key, wait=True)

    def unlock(self, key: str) -> None:
        off = self.offset(key)
        with self._mutex:
            if off not in self._held:
                return
            self._held[off] -= 1
            if self._held[off]:
                return
            del self._held[off]
            try:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, 1, off, os.SEEK_SET)
            except OSError as exc:
                if exc.errno not in _NO_LOCKS:
                    raise
            self._close_if_idle()

    @contextmanager
    def held(self, key: str) -> Iterator[None]:
        self.lock(key)
        try:
            yield
        finally:
            self.unlock(key)


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
        else:  # a finite image replaces a flagged one (another writer may have removed it already)
            self.flag_path(key).unlink(missing_ok=True)
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

    def fill(self, keys: Sequence[str], make: Callable[[list[str]], int]) -> int:
        """Make every missing image of ``keys`` through ``make(keys to make) -> images written``,
        splitting the work with other processes filling this store at the same time: each
        missing key is claimed (:class:`KeyLocks`, ``images/.lock``) before it is made, keys
        claimed elsewhere are waited for, and a key whose maker died is made here. When this
        process claims every missing key at once, ``make`` gets all of ``keys`` (it skips what
        exists). Returns the number of images this process wrote."""
        keys = list(keys)
        locks = KeyLocks.at(self.root / ".lock")
        made, first = 0, True
        while True:
            missing = [k for k in keys if not self.has(k)]
            mine = [k for k in missing if locks.try_lock(k)]
            try:
                if first and len(mine) == len(missing):
                    return made + make(keys)
                if mine:
                    made += make(mine)
            finally:
                for k in mine:
                    locks.unlock(k)
            first = False
            rest = [k for k in keys if not self.has(k)]
            if not rest:
                return made
            if not mine:  # all being made elsewhere: wait for one maker to finish, then look again
                locks.lock(rest[0])
                locks.unlock(rest[0])


#: what the lock file of a run directory held by shards says instead of a pid
_SHARDS = "shards"


class RunStore:
    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.images = ImageStore(self.root / "images")
        self._lock_fh = None

    # -- lock ---------------------------------------------------------------------------
    def acquire(self, shared: bool = False) -> None:
        """Hold the run directory: exclusively for a run, ``shared`` by the shards of one run
        (:mod:`evallearn.suite.shard`), which write disjoint images beside each other."""
        self.root.mkdir(parents=True, exist_ok=True)
        fh = open(self.root / "lock", "a+")
        try:
            fcntl.flock(fh.fileno(), (fcntl.LOCK_SH if shared else fcntl.LOCK_EX) | fcntl.LOCK_NB)
        except BlockingIOError:
            fh.seek(0)
            holder = fh.read().strip() or "?"
            fh.close()
            holder = "its shards" if holder == _SHARDS else f"pid {holder}"
            raise UserError(
                f"run directory {self.root} is in use by another run ({holder}); "
                "wait for it to finish or change output_dir"
            ) from None
        except OSError as exc:
            fh.close()
            if exc.errno not in _NO_LOCKS:
                raise
            raise UserError(f"run directory {self.root}: the filesystem refuses file locks "
                            f"({os.strerror(exc.errno)}); mount it with locking enabled") from None
        fh.seek(0)
        fh.truncate()
        fh.write(_SHARDS if shared else str(os.getpid()))  # shards hold it together: no one pid
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
