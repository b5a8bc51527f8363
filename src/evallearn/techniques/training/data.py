"""Training data of the fine-tuning techniques: images generated with the base model (as
scaled VAE latents) and the prompt sets (the erased concept's words, the retain prompts, caption
templates, the anchor).

Everything is seeded from explicit ``torch.Generator`` objects, so the same spec trains the same
weights.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ..._torch import no_grad
from ...models.sampling import seed_generators, vae_encode

if TYPE_CHECKING:
    import torch


@no_grad
def generate_latents(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float,
                     height: int, width: int, batch: int = 8, eta: float = 0.0, label: str = "") -> torch.Tensor:
    """Images of ``prompts`` from the (base) pipeline, decoded to pixels and re-encoded with the
    VAE (as a training script reading the saved images would), as scaled latents ``[N, C, h, w]``."""
    import torch
    from diffusers import DDIMScheduler

    saved = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(saved.config)
    out = []
    from ...progress import progress_bar

    try:
        with progress_bar(label or "training images", len(prompts)) as advance:
            for i in range(0, len(prompts), batch):
                ps, ss = list(prompts[i: i + batch]), list(seeds[i: i + batch])
                gens = seed_generators(ss)
                img = pipe(ps, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                           generator=gens, eta=eta, output_type="pt").images
                out.append(encode_images(pipe, img * 2 - 1, gens[0]))
                advance(len(ps))
    finally:
        pipe.scheduler = saved
    return torch.cat(out)


def encode_images(pipe, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels in [-1, 1] → VAE latents (a sample of the posterior, scaled)."""
    return vae_encode(pipe.vae, pixels, generator)


def concept_words(ctx, prompts: Sequence[str] | None) -> list[str]:
    """Training prompts for the erased concept: the given list, else the concept's name."""
    out = [p for p in (prompts or (ctx.concept.name,)) if p.strip()]
    if not out:
        raise ValueError("no prompts for the erased concept")
    return out


def retain_words(ctx, prompts: Sequence[str] | None, templates: Sequence[str] = ("{}",)) -> list[str]:
    """Prompts whose behaviour must be kept: given, else the concept's retain concepts (the toy
    world's other shapes on the toy model)."""
    if prompts is not None:
        return [p for p in prompts if p.strip()]
    from ...concept_sets import retain_concepts

    return [t.format(c) for c in retain_concepts(ctx) for t in templates]


def concept_image_prompt(ctx, template: str | None) -> str:
    """The When-Are-Concepts-Erased data prompt: "a picture of a <object>" / "a painting in the
    style of <style>"."""
    if template is None:
        template = "a painting in the style of {}" if ctx.concept.kind == "style" else "a picture of a {}"
    return template.format(ctx.concept.name)


GENERIC_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}", "a {}")


def caption_prompts(ctx, word: str) -> list[str]:
    """Captions of images of ``word`` as the model's world writes them (the open world: generic
    photo templates; a closed world: its own training captions)."""
    return list(ctx.world.captions(word))


def default_anchor(ctx) -> str | None:
    """The concept's anchor (a neutral replacement) as its world resolved it, if any."""
    return ctx.concept.anchor or None
