"""One keyed cache for everything a run computes once and reuses.

An entry is addressed by the hash of its *complete* spec: a JSON-able dict naming everything
that determines the value (the component's name, ``version`` and parameters, the inputs it
reads, the weights fingerprints of the models and judges involved). Nothing outside the spec
may change the value; nothing inside it should be irrelevant to it (an output folder, a run
name, the metric list of a run are never part of a technique's spec). The shape follows HELM's
``Cache.get(request, compute)`` (Liang et al., "Holistic Evaluation of Language Models", 2022).

Protocol: ``compute`` runs in the caller's process; its value is saved into a private temporary
folder next to the entry, the canonical spec is written beside it (``spec.json``), and the
folder is renamed onto the entry's path. A directory rename is atomic and refuses a non-empty
target, so a reader sees a complete entry or none, and two processes computing the same entry
are safe without a lock: the first rename wins, the loser discards its copy and keeps its own
(equal) value. An entry whose ``spec.json`` differs from the spec asked for (a hash collision,
or a folder left by another layout) is a miss and is never overwritten.

So that such an entry is also *computed* once when processes (suite cells on Ray workers, on
one machine or many sharing the folder) ask for it together, :meth:`Cache.get_or_compute`
holds a lock on the entry's key (:class:`evallearn.store.KeyLocks`, one byte of
``<root>/.lock``) while it computes; the others wait and then load the entry. The lock only
saves work: where the filesystem refuses locks, the rename protocol above still holds.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import asdict, is_dataclass
from pathlib import Path
from typing import Any

from .config import canonical, short_hash
from .store import KeyLocks, atomic_write_bytes

#: hex digits of an entry's key
KEY_LENGTH = 16
SPEC_FILE = "spec.json"


def plain(obj: Any) -> Any:
    """``obj`` as JSON-able data: pydantic models and dataclasses become dicts, tuples and sets
    lists (sets sorted), so equal specs hash equally whatever types carried them."""
    if hasattr(obj, "model_dump"):
        return plain(obj.model_dump(mode="json"))
    if is_dataclass(obj) and not isinstance(obj, type):
        return plain(asdict(obj))
    if isinstance(obj, Mapping):
        return {str(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, set | frozenset):
        return sorted(plain(v) for v in obj)
    if isinstance(obj, list | tuple):
        return [plain(v) for v in obj]
    if isinstance(obj, Path):
        return str(obj)
    return obj


def component_spec(component: Any) -> dict[str, Any]:
    """What names a component inside a spec: name, code version and resolved parameters."""
    params = getattr(component, "params", None)
    return {"name": component.name, "version": getattr(component, "version", "1"),
            "params": plain(params) if params is not None else {}}


def judge_spec(judge: Any) -> dict[str, Any]:
    """A judge as it enters a spec: its resolved :meth:`spec` (rule preset, thresholds, model),
    its code version and, where the judge can say, a fingerprint of the weights it loads."""
    fingerprint = getattr(judge, "weights_fingerprint", None)
    return {"spec": plain(judge.spec()), "version": getattr(judge, "version", "1"),
            "weights": fingerprint() if callable(fingerprint) else None}


def save_json(value: Any, folder: Path) -> None:
    atomic_write_bytes(folder / "value.json", (json.dumps(value, indent=1, default=str) + "\n").encode())


def load_json(folder: Path) -> Any:
    return json.loads((folder / "value.json").read_text())


class Cache:
    """Entries under ``root``, one folder each: ``<spec name>-<key>/``."""

    def __init__(self, root: Path | str) -> None:
        self.root = Path(root)

    @staticmethod
    def key(spec: Mapping[str, Any]) -> str:
        return short_hash(plain(spec), KEY_LENGTH)

    def path(self, spec: Mapping[str, Any]) -> Path:
        label = str(spec.get("name") or "entry").replace("/", "_")
        return self.root / f"{label}-{self.key(spec)}"

    def has(self, spec: Mapping[str, Any]) -> bool:
        folder = self.path(spec)
        try:
            return (folder / SPEC_FILE).read_text() == canonical(plain(spec))
        except OSError:
            return False

    def get_or_compute(self, spec: Mapping[str, Any], compute: Callable[[], Any],
                       save: Callable[[Any, Path], None] = save_json,
                       load: Callable[[Path], Any] = load_json) -> tuple[Any, bool]:
        """``(value, hit)``: the stored value of ``spec`` (``load(folder)``), or ``compute()``
        published through ``save(value, folder)``. Another process computing the same entry
        is waited for (its entry is then loaded), not repeated."""
        if self.has(spec):
            return load(self.path(spec)), True
        with KeyLocks.at(self.root / ".lock").held(self.key(spec)):
            if self.has(spec):  # published while this process waited
                return load(self.path(spec)), True
            value = compute()
            self.publish(spec, value, save)
        return value, False

    def publish(self, spec: Mapping[str, Any], value: Any, save: Callable[[Any, Path], None]) -> Path:
        """Save ``value`` as the entry of ``spec`` (compute, then one atomic rename); returns its
        folder. A concurrent writer that published first keeps its entry."""
        folder = self.path(spec)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
        try:
            save(value, tmp)
            atomic_write_bytes(tmp / SPEC_FILE, canonical(plain(spec)).encode())
            try:
                os.rename(tmp, folder)
            except OSError:
                if not folder.exists():
                    raise
                shutil.rmtree(tmp, ignore_errors=True)  # another process published the same entry
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return folder


# -- weight edits stored as the tensors they changed ------------------------------------------


def tensor_digest(tensor) -> bytes:
    """A SHA-256 digest of a tensor's dtype, shape and bytes (any device, any dtype)."""
    import torch

    t = tensor.detach()
    if t.device.type != "cpu":
        t = t.cpu()
    raw = t.contiguous().reshape(-1).view(torch.uint8).numpy()
    h = hashlib.sha256(f"{t.dtype}{tuple(t.shape)}".encode())
    h.update(memoryview(raw))
    return h.digest()


def _digests(items: list[tuple[str, Any]]) -> list[bytes]:
    # hashlib releases the GIL on large buffers: threads hash tensors in parallel
    from concurrent.futures import ThreadPoolExecutor

    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        return list(pool.map(lambda kv: tensor_digest(kv[1]), items))


def state_digests(module) -> dict[str, bytes]:
    items = list(module.state_dict().items())
    return dict(zip([k for k, _ in items], _digests(items), strict=True))


def changed_tensors(module, before: dict[str, bytes]) -> dict[str, Any]:
    """The entries of ``module``'s state dict whose bytes differ from ``before`` (digests of the
    same module before an edit), copied to the CPU. An edit that adds or removes entries changed
    the architecture and cannot be stored as a difference: that raises."""
    state = module.state_dict()
    if set(state) != set(before):
        added, removed = sorted(set(state) - set(before)), sorted(set(before) - set(state))
        raise RuntimeError(f"the edit changed the module's parameters (added {added[:3]}, removed {removed[:3]}); "
                           "only value changes can be cached")
    items = list(state.items())
    return {k: v.detach().contiguous().cpu().clone()
            for (k, v), d in zip(items, _digests(items), strict=True) if d != before[k]}


def save_tensors(edit: dict[str, dict[str, Any]], folder: Path) -> None:
    """``edit``: component name -> {state-dict key: tensor}; one safetensors file per component
    (an empty file when the component did not change)."""
    from safetensors.torch import save_file

    for name, state in edit.items():
        save_file(state, str(folder / f"{name}.safetensors"), metadata={"changed": str(len(state))})


def load_tensors(folder: Path, names: tuple[str, ...], device: str = "cpu") -> dict[str, dict[str, Any]]:
    from safetensors.torch import load_file

    return {name: load_file(str(folder / f"{name}.safetensors"), device=device) for name in names}


def apply_tensors(pipe, edit: dict[str, dict[str, Any]]) -> None:
    """Copy stored changed tensors onto ``pipe``'s components (keys must exist there)."""
    for name, state in edit.items():
        module = getattr(pipe, name)
        missing = set(state) - set(module.state_dict())
        if missing:
            raise RuntimeError(f"cached edit of '{name}' names tensors the model lacks: {sorted(missing)[:3]}")
        module.load_state_dict(state, strict=False)
