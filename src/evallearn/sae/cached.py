"""Trained SAEs through the one cache (:class:`evallearn.cache.Cache`), shared across runs.

An SAE is keyed by what determines its weights: the site it reads (hookpoint / layer), its
training parameters (with a content fingerprint of the prompt file), the run seed, the model's
ref and weights fingerprint, the dtype, the code version of the SAE training and of the
technique that trains it and, for an SAE on UNet activations, the sampler and image size the
activations are drawn with. The concept and the technique's steering settings (strength,
multiplier, ...) are not in the key: changing them reuses the SAE. Entries live under
``<output_dir>/_sae/<technique>-sae-<key>/``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..cache import Cache
from .model import TopKSAE

#: the version of the SAE model and training code; enters every SAE key
SAE_VERSION = "1"
_TRAIN_FIELDS = ("expansion", "k", "lr")


def train_spec(params) -> dict[str, Any]:
    """The training fields of a technique's params (``train_*``, ``expansion``, ``k``, ``lr``) and,
    for a prompt file, a SHA-256 of its bytes."""
    raw = params.model_dump(mode="json")
    out = {k: v for k, v in raw.items() if k.startswith("train_") or k in _TRAIN_FIELDS}
    path = raw.get("train_prompts")
    if path and Path(path).is_file():
        out["train_prompts_sha256"] = hashlib.sha256(Path(path).read_bytes()).hexdigest()
    return out


def sae_spec(ctx, technique, site: str, reads_sampler: bool = False) -> dict[str, Any]:
    spec = {"kind": "sae", "name": f"{technique.name}-sae", "version": SAE_VERSION,
            "technique_version": technique.version, "site": site, "train": train_spec(technique.params),
            "seed": ctx.seed, "model": {"ref": ctx.model.ref, "fingerprint": ctx.model.fingerprint},
            "dtype": ctx.config.dtype}
    if reads_sampler:
        s = ctx.config.sampler
        spec["sampler"] = {"scheduler": s.scheduler, "steps": s.steps, "guidance_scale": s.guidance_scale,
                           "eta": s.eta, "height": ctx.height, "width": ctx.width}
    return spec


def ensure_sae(ctx, technique, site: str, train: Callable[[], TopKSAE],
               reads_sampler: bool = False) -> tuple[TopKSAE, bool]:
    """``(sae, cached)``: the stored SAE of this spec, or ``train()`` stored."""
    cache = Cache(Path(ctx.config.output_dir) / "_sae")
    return cache.get_or_compute(sae_spec(ctx, technique, site, reads_sampler), train,
                                save=lambda sae, folder: sae.save(folder), load=TopKSAE.load)
