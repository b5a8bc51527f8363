"""TraSCE — Trajectory Steering for Concept Erasure (Jain, Kobayashi, Shibuya, Takida, Memon,
Togelius & Mitsufuji, 2024, arXiv:2412.07658; code: anubhav1997/TraSCE, SonyResearch/TraSCE).

Two changes to sampling, no weights touched:

1. **Modified negative prompting.** The UNet predicts ε_∅ (empty text), ε_p (prompt) and ε_n (the
   concept text as negative prompt) and the step uses

       ε = ε_∅ + w · (ε_p − ε_n)

   instead of the usual ε_n + w · (ε_p − ε_n): when the prompt asks for the concept (ε_p ≈ ε_n)
   guidance vanishes and the sample falls back to the unconditional one, rather than being pushed
   towards whatever the negative prompt's own prediction holds.

2. **Localized loss-based guidance.** Before each scheduler step the latent is moved by one
   gradient step on

       L(x_t) = −λ · exp(−‖ε_p(x_t) − ε_n(x_t)‖ / σ),      x_t ← x_t − η ∇_{x_t} L

   a kernel that is ~1 only where prompt and concept predictions are close (so prompts far from the
   concept are left alone) and whose gradient steers those latents further into the region where
   the prompt's guidance collapses onto the concept's. As in the authors' script, the noise
   prediction of the step is the one computed before the latent update, and the scheduler steps
   from the updated latent.

The norm is taken per sample (the authors generate one prompt at a time; here a batch's loss is
the sum of per-sample losses, so each sample's gradient is its own and batching does not change
an image). Defaults are the authors' published commands per concept kind: nudity λ = 1.5, η = 1,
σ = 2; violence 1.5 / 1 / 1; styles 1 / 1 / 0.25; objects (and anything else) 1 / 1 / 1. The
negative text defaults to the concept and its synonyms joined by commas (their ``--concept_erasure``
lists, e.g. "naked, nude, bare, ...").
"""

from __future__ import annotations

from pydantic import Field

from ..components import Params, Supports, kinds
from ..context import RunContext
from ._guided import Guidance, guided
from .base import Technique

#: (guidance_loss_scale λ, discriminator_guidance_scale η, sigma σ) from the authors' README commands
DEFAULTS_BY_KIND: dict[str, tuple[float, float, float]] = {
    "nudity": (1.5, 1.0, 2.0),
    "violence": (1.5, 1.0, 1.0),
    "style": (1.0, 1.0, 0.25),
    "object": (1.0, 1.0, 1.0),
}
NUDITY_TEXT = "naked, nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks"
VIOLENCE_TEXT = "hate, harassment, violence, suffering, humiliation, harm, suicide, blood"


class TraSCEPipeline(Guidance):
    """Stable Diffusion with TraSCE's negative prompting and latent steering."""

    concept_text: str = ""
    loss_scale: float = 1.0  # λ
    step_size: float = 1.0  # η
    sigma: float = 1.0  # σ

    def setup_guidance(self, prompts, negative_prompts, cond, uncond, guidance_scale):
        return {"neg": self.embed_texts([self.concept_text]).expand(len(prompts), -1, -1)}

    def guided_noise(self, i, t, latents, cond, uncond, guidance_scale, state):
        import torch

        emb = torch.cat([uncond, cond, state["neg"].to(cond.dtype)])
        steer = self.loss_scale != 0 and self.step_size != 0
        with torch.enable_grad():
            x = latents.detach().requires_grad_(steer)
            inp = self.scheduler.scale_model_input(torch.cat([x] * 3), t)
            e_u, e_p, e_n = self.unet(inp, t, encoder_hidden_states=emb).sample.chunk(3)
            if steer:
                dist = (e_p - e_n).flatten(1).norm(dim=1)  # per sample
                loss = (-self.loss_scale * torch.exp(-dist / self.sigma)).sum()
                (grad,) = torch.autograd.grad(loss, x)
                latents = latents - self.step_size * grad
        noise = e_u + guidance_scale * (e_p - e_n)
        return noise.detach(), latents.detach()


class TraSCE(Technique):
    description = "TraSCE: negative-prompt guidance eps_0 + w(eps_p - eps_n) plus a localized loss steering the latent."
    paper = "Jain et al., arXiv:2412.07658 (2024)"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: the concept text used as negative prompt; default: the run's concept and synonyms
        negative_prompt: str | None = None
        #: λ; default by concept kind (see the module docstring)
        guidance_loss_scale: float | None = Field(None, ge=0.0)
        #: η, the step size of the latent update; default by concept kind
        discriminator_guidance_scale: float | None = Field(None, ge=0.0)
        #: σ, the width of the localizing kernel; default by concept kind
        sigma: float | None = Field(None, gt=0.0)

    def settings(self, ctx: RunContext) -> dict:
        p = self.params
        lam, eta, sigma = DEFAULTS_BY_KIND.get(ctx.concept.kind, DEFAULTS_BY_KIND["object"])
        if p.negative_prompt is not None:
            text = p.negative_prompt
        elif ctx.concept.kind == "nudity" and ctx.concept.name == "nudity":
            text = NUDITY_TEXT
        elif ctx.concept.kind == "violence" and ctx.concept.name == "violence":
            text = VIOLENCE_TEXT
        else:
            text = ", ".join((ctx.concept.name, *ctx.concept.synonyms))
        return {
            "concept_text": text,
            "loss_scale": lam if p.guidance_loss_scale is None else p.guidance_loss_scale,
            "step_size": eta if p.discriminator_guidance_scale is None else p.discriminator_guidance_scale,
            "sigma": sigma if p.sigma is None else p.sigma,
        }

    def apply(self, pipe, ctx: RunContext):
        return guided(TraSCEPipeline, pipe, **self.settings(ctx))
