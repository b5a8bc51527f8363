"""SLD — Safe Latent Diffusion (Schramowski, Brack, Deiseroth & Kersting, CVPR 2023, "Safe Latent
Diffusion: Mitigating Inappropriate Degeneration in Diffusion Models", arXiv:2211.05105).

Inference-time safety guidance on any Stable Diffusion pipeline. Each step runs the UNet on the
unconditional, the prompt and a safety-concept text S (three predictions ε_∅, ε_p, ε_S) and
replaces classifier-free guidance by

    ε = ε_∅ + s_g · ((ε_p − ε_∅) − γ)                                    (Eq. 3)
    γ = μ ⊙ (ε_S − ε_∅) + s_m · ν                                       (Eq. 4, 7)
    μ = min(s_S · |ε_p − ε_S|, 1)  where ε_p − ε_S < λ, else 0           (Eq. 6, element-wise)
    ν ← β_m · ν + (1 − β_m) · γ                                          (Eq. 8, the momentum)

with γ applied only from step δ (the warm-up) on, while the momentum builds up from step 0.
This is the semantics of the authors' ``SLDPipeline`` (ml-research/safe-latent-diffusion) and of
diffusers' ``StableDiffusionPipelineSafe``; here it is a subclass of ``StableDiffusionPipeline``
built from the loaded pipeline's modules, so it runs on SD 1.x / 2.x and the toy model alike.
Every operation is element-wise per sample, so batching does not change an image.

Presets are the paper's four hyper-parameter sets (δ, s_S, λ, s_m, β_m): WEAK (15, 200, 0, 0, 0),
MEDIUM (10, 1000, 0.01, 0.3, 0.4), STRONG (7, 2000, 0.025, 0.5, 0.7), MAX (0, 5000, 1.0, 0.5, 0.7).
The default is MEDIUM, the authors' pipeline default. (diffusers' ``SafetyConfig.WEAK`` has
s_S = 20; the paper and the authors' scripts use 200.) The default safety concept is the text of
the authors' ``SLDPipeline`` (the I2P categories as a comma-separated list); diffusers'
``StableDiffusionPipelineSafe`` prefixes the same list with "an image showing"
(:data:`DIFFUSERS_SAFETY_CONCEPT`, to pass as ``safety_concept`` for diffusers' behaviour).
"""

from __future__ import annotations

from pydantic import Field, field_validator

from ..components import Params, Supports, kinds
from ..concepts.catalogue import SLD_FIELDS as _FIELDS
from ..concepts.catalogue import sld_presets
from ..context import RunContext
from ._guided import Guidance, guided
from .base import Technique

#: The safety concept of the authors' ``SLDPipeline`` (ml-research/safe-latent-diffusion): I2P's
#: categories, comma-separated.
DEFAULT_SAFETY_CONCEPT = (
    "hate, harassment, violence, suffering, humiliation, harm, suicide, sexual, nudity, "
    "bodily fluids, blood, obscene gestures, illegal activity, drug use, theft, vandalism, weapons, child abuse, "
    "brutality, cruelty"
)
#: diffusers' ``StableDiffusionPipelineSafe`` default: the same list after "an image showing ".
DIFFUSERS_SAFETY_CONCEPT = "an image showing " + DEFAULT_SAFETY_CONCEPT


def __getattr__(name: str):
    """``PRESETS``: (warmup_steps, guidance_scale, threshold, momentum_scale, mom_beta) per preset,
    SLD paper Sec. 5, read from assets/concepts/presets/sld.yaml."""
    if name == "PRESETS":
        return sld_presets()
    raise AttributeError(name)


class SLDPipeline(Guidance):
    """Stable Diffusion with safety guidance; settings in ``self.sld`` (a dict of :data:`_FIELDS`)."""

    safety_concept: str = DEFAULT_SAFETY_CONCEPT
    sld: dict = {}

    def setup_guidance(self, prompts, negative_prompts, cond, uncond, guidance_scale):
        return {"safety": self.embed_texts([self.safety_concept]).expand(len(prompts), -1, -1), "momentum": None}

    def guided_noise(self, i, t, latents, cond, uncond, guidance_scale, state):
        import torch

        s = self.sld
        if s["sld_guidance_scale"] < 1.0 or guidance_scale <= 1.0:  # SLD off, as in the authors' pipeline
            return super().guided_noise(i, t, latents, cond, uncond, guidance_scale, state)
        x = self.scheduler.scale_model_input(torch.cat([latents] * 3), t)
        emb = torch.cat([uncond, cond, state["safety"].to(cond.dtype)])
        e_u, e_p, e_s = self.unet(x, t, encoder_hidden_states=emb).sample.chunk(3)
        guidance = e_p - e_u
        if state["momentum"] is None:
            state["momentum"] = torch.zeros_like(guidance)
        diff = e_p - e_s
        scale = torch.clamp(diff.abs() * s["sld_guidance_scale"], max=1.0)
        scale = torch.where(diff >= s["threshold"], torch.zeros_like(scale), scale)
        safety = (e_s - e_u) * scale + s["momentum_scale"] * state["momentum"]
        state["momentum"] = s["mom_beta"] * state["momentum"] + (1 - s["mom_beta"]) * safety
        if i >= s["warmup_steps"]:
            guidance = guidance - safety
        return e_u + guidance_scale * guidance, latents


class SLD(Technique):
    description = "Safe Latent Diffusion: safety guidance away from a safety-concept text at every step."
    paper = "Schramowski et al., CVPR 2023"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: the paper's hyper-parameter set (weak, medium, strong, max: assets/concepts/presets/sld.yaml);
        #: explicit values below override it
        preset: str = "medium"
        #: the safety concept S; default: the authors' SLDPipeline text (I2P's categories), or the run's concept
        #: (with its synonyms) when ``concept_from_run`` is true
        safety_concept: str | None = None
        concept_from_run: bool = False
        warmup_steps: int | None = Field(None, ge=0)
        sld_guidance_scale: float | None = Field(None, ge=0.0)
        threshold: float | None = None
        momentum_scale: float | None = Field(None, ge=0.0)
        mom_beta: float | None = Field(None, ge=0.0, le=1.0)

        @field_validator("preset")
        @classmethod
        def _known_preset(cls, value: str) -> str:
            if value not in sld_presets():
                raise ValueError(f"unknown preset {value!r}; known: {', '.join(sld_presets())}")
            return value

    def settings(self) -> dict:
        p = self.params
        values = dict(zip(_FIELDS, sld_presets()[p.preset], strict=True))
        for k in _FIELDS:
            if getattr(p, k) is not None:
                values[k] = getattr(p, k)
        return values

    def concept_text(self, ctx: RunContext) -> str:
        p = self.params
        if p.safety_concept is not None:
            return p.safety_concept
        if p.concept_from_run:
            return ", ".join((ctx.concept.name, *ctx.concept.synonyms))
        return DEFAULT_SAFETY_CONCEPT

    def apply(self, pipe, ctx: RunContext):
        return guided(SLDPipeline, pipe, safety_concept=self.concept_text(ctx), sld=self.settings())
