"""The technique interface.

A technique takes the loaded base pipeline and a concept and returns the unlearned pipeline.

Weight-editing techniques (``edits`` names the components they change) are cached through
:class:`evallearn.cache.Cache`, keyed by :meth:`Technique.cache_spec`: the technique's name,
``version`` and parameters, the :meth:`Technique.inputs` it reads from the run (the concept as
resolved, seed, image size, and the sampler where it samples with it), the model's ref and
weights fingerprint and the dtype. Nothing else: the output folder, run name, metrics and
probes never invalidate an edit. An entry holds only the tensors the edit changed (compared by
digest against the base pipeline's state), one safetensors file per edited component, and a
rerun copies them onto the freshly loaded base pipeline instead of redoing the edit.
Inference-time techniques return a pipeline subclass / attach attention processors or
callbacks; they store nothing.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

from ..cache import Cache, apply_tensors, changed_tensors, load_tensors, plain, save_tensors, state_digests
from ..components import Component, Params
from ..context import RunContext


class Technique(Component):
    #: components (``unet``, ``text_encoder``) whose weights the technique changes; their
    #: changed tensors are what gets cached.
    edits: ClassVar[tuple[str, ...]] = ()
    #: False only for the identity (free run): then "before" would equal "after" and is skipped.
    changes_model: ClassVar[bool] = True

    def __init__(self, params: Params) -> None:
        self.params = params

    def apply(self, pipe, ctx: RunContext):
        """Return the unlearned pipeline (may be ``pipe`` edited in place)."""
        raise NotImplementedError

    def inputs(self, ctx: RunContext) -> dict[str, Any]:
        """Everything of the run this technique reads besides its params and the model: by
        default the concept (name, kind, synonyms, retain, anchor as resolved), the seed and the
        image size. A technique that samples with the run's sampler adds it."""
        return {"concept": plain(ctx.concept), "seed": ctx.seed, "height": ctx.height, "width": ctx.width}

    def cache_spec(self, ctx: RunContext) -> dict[str, Any]:
        """The complete key of this technique's edit on ``ctx``'s model."""
        return {"kind": "technique_edit", "name": self.name, "version": self.version,
                "params": plain(self.params), "edits": list(self.edits), "inputs": self.inputs(ctx),
                "model": {"ref": ctx.model.ref, "fingerprint": ctx.model.fingerprint}, "dtype": ctx.config.dtype}

    # -- weight cache ---------------------------------------------------------------------
    def load_or_apply(self, pipe, ctx: RunContext):
        """``(pipeline, cached)``: the stored edit copied onto ``pipe`` (the base pipeline), or
        :meth:`apply` run and its changed tensors stored. Sets ``ctx.cache_dir`` to the entry."""
        if not self.edits:
            return self.apply(pipe, ctx), False
        cache, spec = technique_cache(ctx), self.cache_spec(ctx)
        ctx.cache_dir = cache.path(spec)
        out: dict[str, Any] = {}

        def compute():
            before = {name: state_digests(getattr(pipe, name)) for name in self.edits}
            out["pipe"] = self.apply(pipe, ctx)
            return {name: changed_tensors(getattr(out["pipe"], name), before[name]) for name in self.edits}

        edit, hit = cache.get_or_compute(spec, compute, save=save_tensors,
                                         load=lambda folder: load_tensors(folder, self.edits))
        if hit:
            apply_tensors(pipe, edit)
            return pipe, True
        return out["pipe"], False


def technique_cache(ctx: RunContext) -> Cache:
    """Where edits live: ``<output_dir>/_techniques/<technique>-<key>/``."""
    return Cache(Path(ctx.config.output_dir) / "_techniques")
