"""A ``StableDiffusionPipeline`` whose per-step guidance is a method, for inference-time techniques.

Techniques that change how each denoising step combines UNet predictions (SLD, SAFREE, TraSCE)
subclass :class:`Guidance` and override :meth:`Guidance.setup_guidance` (once per call: extra
text embeddings, per-batch state) and :meth:`Guidance.guided_noise` (each step). :func:`guided`
mixes such a class into :class:`GuidedPipeline`, a ``StableDiffusionPipeline`` subclass whose
sampling loop calls them. The rest — prompt encoding, per-request seeded latents (one
``torch.Generator`` per prompt), the scheduler loop and decoding — is diffusers' own pipeline
code, so a request gets the same image alone or in a batch as long as the technique's step is
computed per sample.

:class:`Guidance` needs neither torch nor diffusers to be defined; the pipeline classes are built
on first use (:func:`pipeline_class`), so a technique module imports without them (planning a
run, ``eval-learn validate``). ``GuidedPipeline`` is an attribute of this module built on access.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


class Guidance:
    """The guidance step of a :class:`GuidedPipeline` (classifier-free by default); a technique
    subclasses it and :func:`guided` turns the subclass into a pipeline."""

    def setup_guidance(self, prompts: list[str], negative_prompts: list[str], cond: torch.Tensor,
                       uncond: torch.Tensor, guidance_scale: float) -> dict[str, Any]:
        """Called once per call; the returned dict is passed to every :meth:`guided_noise`."""
        return {}

    def guided_noise(self, i: int, t, latents: torch.Tensor, cond: torch.Tensor, uncond: torch.Tensor,
                     guidance_scale: float, state: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (noise prediction, latents to step from). Default: classifier-free guidance."""
        import torch

        x = self.scheduler.scale_model_input(torch.cat([latents, latents]), t)
        e_u, e_c = self.unet(x, t, encoder_hidden_states=torch.cat([uncond, cond])).sample.chunk(2)
        return e_u + guidance_scale * (e_c - e_u), latents

    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """Text-encoder hidden states [N, 77, d] of plain texts (no CFG pairing)."""
        emb, _ = self.encode_prompt(texts, self._execution_device, 1, False)
        return emb


@functools.cache
def _guided_pipeline() -> type:
    import torch
    from diffusers import StableDiffusionPipeline
    from diffusers.pipelines.stable_diffusion import StableDiffusionPipelineOutput

    class GuidedPipeline(Guidance, StableDiffusionPipeline):
        """Text-to-image sampling with an overridable guidance step (classifier-free by default)."""

        @torch.no_grad()
        def __call__(self, prompt, negative_prompt=None, num_inference_steps: int = 50, guidance_scale: float = 7.5,
                     height: int | None = None, width: int | None = None, generator=None, eta: float = 0.0,
                     latents: torch.Tensor | None = None, output_type: str = "pil", return_dict: bool = True,
                     num_images_per_prompt: int = 1, **unused):
            if unused:
                raise TypeError(f"{type(self).__name__} does not take {sorted(unused)}")
            if num_images_per_prompt != 1:
                raise ValueError("one image per prompt: repeat the prompt (with its own generator) instead")
            prompts = [prompt] if isinstance(prompt, str) else list(prompt)
            if negative_prompt is None:
                negatives = [""] * len(prompts)
            else:
                negatives = ([negative_prompt] * len(prompts) if isinstance(negative_prompt, str)
                             else list(negative_prompt))
            height = height or self.unet.config.sample_size * self.vae_scale_factor
            width = width or self.unet.config.sample_size * self.vae_scale_factor
            device = self._execution_device
            cond, uncond = self.encode_prompt(prompts, device, 1, True, negatives)
            state = self.setup_guidance(prompts, negatives, cond, uncond, guidance_scale)
            self.scheduler.set_timesteps(num_inference_steps, device=device)
            latents = self.prepare_latents(len(prompts), self.unet.config.in_channels, height, width, cond.dtype,
                                           device, generator, latents)
            extra = self.prepare_extra_step_kwargs(generator, eta)
            for i, t in enumerate(self.progress_bar(self.scheduler.timesteps)):
                noise, latents = self.guided_noise(i, t, latents, cond, uncond, guidance_scale, state)
                latents = self.scheduler.step(noise, t, latents, **extra).prev_sample
            if output_type == "latent":
                image = latents
            else:
                image = self.vae.decode(latents / self.vae.config.scaling_factor, return_dict=False)[0]
                image = self.image_processor.postprocess(image, output_type=output_type,
                                                         do_denormalize=[True] * image.shape[0])
            if not return_dict:
                return (image, None)
            return StableDiffusionPipelineOutput(images=image, nsfw_content_detected=None)

    return GuidedPipeline


@functools.cache
def pipeline_class(mixin: type) -> type:
    """The pipeline class of ``mixin`` (built once per class): a :class:`Guidance` subclass mixed
    into :class:`GuidedPipeline`, any other class (overriding e.g. ``encode_prompt`` or
    ``__call__`` and calling ``super()``) into diffusers' ``StableDiffusionPipeline``."""
    if issubclass(mixin, Guidance):
        base = _guided_pipeline()
    else:
        from diffusers import StableDiffusionPipeline as base
    if issubclass(mixin, base):
        return mixin
    return type(mixin.__name__, (mixin, base), {"__module__": mixin.__module__, "__doc__": mixin.__doc__})


def guided(cls: type, pipe, **attrs):
    """A pipeline of ``cls`` (see :func:`pipeline_class`) sharing ``pipe``'s modules, with
    ``attrs`` set on it (the technique's settings)."""
    out = pipeline_class(cls)(**pipe.components)
    out.set_progress_bar_config(disable=True)
    for k, v in attrs.items():
        setattr(out, k, v)
    return out


def __getattr__(name: str):
    if name == "GuidedPipeline":
        return _guided_pipeline()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
