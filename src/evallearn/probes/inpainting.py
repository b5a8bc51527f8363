"""Inpainting (visual-context) probe of Lu et al. (2025, "When Are Concepts Erased From
Diffusion Models?", arXiv:2505.17013; ``InpaintingProbe`` and the paper-era
``generation/probes/inpaint_eval.py`` in kevinlu4588/WhenAreConceptsErased).

Base-model images of the concept get a centred square hole, and the erased model fills it in,
prompted with the concept's prompt: given the surrounding visual context, does it complete the
concept? The erased UNet *and* the erased text encoder go into the inpainting pipeline (built
with ``StableDiffusionInpaintPipeline.from_pipe`` on the erased pipeline; the authors' ``src/``
probe moved only the UNet, so text-encoder edits were never probed). A 4-channel UNet inpaints
by blending latents outside the mask, as diffusers does for non-inpainting checkpoints (the
authors' setup too). Only the masked region is scored: it is cropped and resized to the full
image size before the scoring judge sees it. The same inpainting with the base model gives the
reference rate. ``mask_fraction`` is the side of the hole over the image side: 0.44 is the
paper-era mask (a 225-px square of 512; the ``src/`` default was 257 px, 0.5).
"""

from __future__ import annotations

import numpy as np
from PIL import Image
from pydantic import Field

from ..generation import make_scheduler, to_uint8
from . import _sampling
from .base import Probe, ProbeEnv, ProbeParams, ProbeResult


def centre_box(size: int, fraction: float) -> tuple[int, int]:
    side = max(1, int(round(size * fraction)))
    lo = (size - side) // 2
    return lo, lo + side


def crop_resize(images: np.ndarray, box: tuple[int, int]) -> np.ndarray:
    lo, hi = box
    size = images.shape[1]
    return np.stack([np.asarray(Image.fromarray(im[lo:hi, lo:hi]).resize((size, size), Image.BICUBIC))
                     for im in images])


class Inpainting(Probe):
    description = "The erased model (UNet and text encoder) inpaints a centre hole in base-model concept images."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"
    needs_base = True

    class Params(ProbeParams):
        mask_fraction: float = Field(0.44, gt=0.0, lt=1.0)
        strength: float = Field(1.0, gt=0.0, le=1.0)
        #: also inpaint with the base model (the reference rate)
        with_base: bool = True

    def mask(self) -> Image.Image:
        h = self.ctx.height
        lo, hi = centre_box(h, self.params.mask_fraction)
        m = np.zeros((h, self.ctx.width), np.uint8)
        m[lo:hi, lo:hi] = 255
        return Image.fromarray(m)

    def inpaint(self, env: ProbeEnv, pipe, role: str, items, contexts: np.ndarray, store=None) -> np.ndarray:
        """``pipe`` inpaints the centre hole of ``contexts`` (the base model's standard images of
        ``items``); stored by :meth:`key` in ``store`` (the erased model's by default)."""
        from diffusers import StableDiffusionInpaintPipeline

        index = {it: i for i, it in enumerate(items)}
        scheduler_cfg = pipe.scheduler.config

        def sample(batch):
            inp = StableDiffusionInpaintPipeline.from_pipe(pipe)
            inp.set_progress_bar_config(disable=True)
            inp.scheduler = make_scheduler(self.ctx.config.sampler.scheduler, scheduler_cfg)
            seeds = [s for _, s in batch]
            out = inp(prompt=[p for p, _ in batch], image=[Image.fromarray(contexts[index[it]]) for it in batch],
                      mask_image=[self.mask()] * len(batch), strength=self.params.strength,
                      generator=_sampling.step_generators(seeds, offset=0), output_type="np",
                      **self.sample_kwargs())
            return to_uint8(np.asarray(out.images))

        return self.cached_sample(env, role, self.setting(), items, sample, store)

    def setting(self) -> dict:
        """What, besides the item, determines an inpainted image (its key)."""
        return {"mask_fraction": self.params.mask_fraction, "strength": self.params.strength}

    def run(self, env: ProbeEnv) -> ProbeResult:
        items = self.items()
        contexts = self.standard_images(env, items, "base")
        box = centre_box(self.ctx.height, self.params.mask_fraction)
        erased = self.inpaint(env, env.erased, "inpaint_erased", items, contexts)
        label = "mask={mask_fraction:g},strength={strength:g}".format(**self.setting())
        rec, samples = self.scored(env, crop_resize(erased, box), items,
                                   self.sample_keys("inpaint_erased", self.setting(), items), setting=label)
        details = {"mask": {"fraction": self.params.mask_fraction, "box_px": list(box), "image_px": self.ctx.height},
                   "prompts": [list(it) for it in items]}
        if self.params.with_base:
            base = self.inpaint(env, env.base, "inpaint_base", items, contexts, env.base_images)
            details["base"] = self.before(env, *self.scored(env, crop_resize(base, box), items,
                                                            self.sample_keys("inpaint_base", self.setting(), items),
                                                            setting=label))
        return self.result(env, rec, details, samples)
