"""The technique interface.

A technique takes the loaded base pipeline and a concept and returns the unlearned pipeline.
Weight-editing techniques save the components they change as safetensors under
``ctx.cache_dir`` (keyed by the technique's spec hash: model, technique, params, concept,
seed, dtype) and load them on a rerun instead of redoing the edit. Inference-time techniques
return a pipeline subclass / attach attention processors or callbacks; they save nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from ..components import Component, Params
from ..context import RunContext


class Technique(Component):
    #: components (``unet``, ``text_encoder``) whose weights the technique changes; these are
    #: what gets cached.
    edits: ClassVar[tuple[str, ...]] = ()
    #: False only for the identity (free run): then "before" would equal "after" and is skipped.
    changes_model: ClassVar[bool] = True

    def __init__(self, params: Params) -> None:
        self.params = params

    def apply(self, pipe, ctx: RunContext):
        """Return the unlearned pipeline (may be ``pipe`` edited in place)."""
        raise NotImplementedError

    # -- weight cache ---------------------------------------------------------------------
    def load_or_apply(self, pipe, ctx: RunContext):
        if self.edits and cache_complete(ctx.cache_dir, self.edits):
            load_components(pipe, ctx.cache_dir, self.edits)
            return pipe, True
        pipe = self.apply(pipe, ctx)
        if self.edits:
            save_components(pipe, ctx.cache_dir, self.edits)
        return pipe, False


def cache_complete(folder: Path, names: tuple[str, ...]) -> bool:
    return (folder / "COMPLETE").exists() and all((folder / f"{n}.safetensors").exists() for n in names)


def save_components(pipe, folder: Path, names: tuple[str, ...]) -> None:
    from safetensors.torch import save_file

    from ..store import atomic_write_bytes

    folder.mkdir(parents=True, exist_ok=True)
    for name in names:
        state = {k: v.detach().contiguous().cpu() for k, v in getattr(pipe, name).state_dict().items()}
        tmp = folder / f".{name}.safetensors.tmp"
        save_file(state, str(tmp))
        tmp.replace(folder / f"{name}.safetensors")
    atomic_write_bytes(folder / "COMPLETE", b"ok\n")


def load_components(pipe, folder: Path, names: tuple[str, ...]) -> None:
    from safetensors.torch import load_file

    for name in names:
        module = getattr(pipe, name)
        state = load_file(str(folder / f"{name}.safetensors"), device=str(module.device))
        module.load_state_dict(state)
