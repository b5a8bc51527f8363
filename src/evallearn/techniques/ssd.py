"""SSD — Selective Synaptic Dampening (Foster, Schoepf & Brintrup, AAAI 2024, "Fast Machine
Unlearning Without Retraining Through Selective Synaptic Dampening", arXiv:2308.07707; code:
if-loops/selective-synaptic-dampening, ``ssd.py``).

SSD estimates each parameter's importance as the diagonal of the Fisher information, the mean
squared gradient of the training loss, once on the data to forget (``F_f``) and once on the
data to keep (``F_r``), then dampens the parameters that matter far more to the forget data:

    selected:  F_f > α F_r                       (α = ``selection_weighting``)
    θ  ←  β θ,   β = min(λ F_r / F_f, 1)         (λ = ``dampening_constant``)

No gradient step is taken. The paper is about classifiers (cross-entropy on images); for a
text-to-image diffusion model the loss is the denoising loss ``||ε - ε_θ(x_t, t, c)||²`` of
the UNet, the "data" are (prompt, image) pairs whose images the model itself generates from
the forget and retain prompts (the original training set is not available; the retain
prompts stand in for the paper's full training set ``D``), with uniform timesteps and fresh
noise per sample. Each Fisher sample is one (prompt, image, t, ε) with its own backward pass,
squared gradients averaged over ``num_samples``; the forget and retain estimates share their
sequence of (t, ε) draws (see :func:`fisher_diagonal`). Defaults: α = 10, λ = 1 (the paper's main
setting); 50 Fisher samples per set (the number the Eval-Learn peer uses on SD).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from .._torch import no_grad
from ..components import Params, Supports, kinds
from ..context import RunContext
from ..models.prediction import denoising_target
from ..models.sampling import seed_generators
from ._closed_form import embed
from .base import Technique

if TYPE_CHECKING:
    import torch


class SSDParams(Params):
    #: prompts to forget; default: the concept's name and synonyms (each through ``templates``)
    forget: tuple[str, ...] | None = None
    #: prompts to keep; default: the empty prompt and concept.retain (through ``templates``)
    retain: tuple[str, ...] | None = None
    #: templates with ``{}`` applied to the default forget/retain concepts; () = the bare words
    templates: tuple[str, ...] = ()
    #: α: a parameter is selected when F_forget > α F_retain
    selection_weighting: float = Field(10.0, gt=0.0)
    #: λ: selected parameters are scaled by min(λ F_retain / F_forget, 1)
    dampening_constant: float = Field(1.0, gt=0.0)
    #: Fisher samples per set (forget, retain); one backward pass each
    num_samples: int = Field(50, ge=1)
    #: images generated per prompt as the x_0 of the Fisher samples
    images_per_prompt: int = Field(1, ge=1)
    #: which UNet parameters may be dampened
    parameters: Literal["unet", "cross_attention"] = "unet"

    @model_validator(mode="after")
    def _check(self):
        for key in ("forget", "retain"):
            v = getattr(self, key)
            if v is not None and not [t for t in v if t.strip()] and key == "forget":
                raise ValueError("forget: the list of prompts to forget is empty")
        if any("{}" not in t for t in self.templates):
            raise ValueError("templates: each template needs a '{}' for the concept")
        return self


class SSD(Technique):
    description = "Selective Synaptic Dampening: scale down UNet weights far more important to the forget prompts."
    paper = "Foster et al., AAAI 2024"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = SSDParams

    def __init__(self, params) -> None:
        super().__init__(params)
        self.stats: dict = {}

    def inputs(self, ctx: RunContext) -> dict:
        """The default inputs plus the sampler: the Fisher images are drawn with the run's steps,
        guidance scale and image size (:func:`generate_latents`)."""
        s = ctx.config.sampler
        return {**super().inputs(ctx), "sampler": {"scheduler": s.scheduler, "steps": s.steps,
                                                   "guidance_scale": s.guidance_scale, "eta": s.eta}}

    def prompts(self, ctx: RunContext) -> tuple[list[str], list[str]]:
        p = self.params

        def expand(words):
            return [t.format(w) for w in words for t in p.templates] if p.templates else list(words)

        forget = list(p.forget) if p.forget is not None else expand([ctx.concept.name, *ctx.concept.synonyms])
        retain = list(p.retain) if p.retain is not None else ["", *expand(ctx.concept.retain)]
        return [f for f in forget if f.strip()], retain or [""]

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        forget, retain = self.prompts(ctx)
        params = dict(selected_parameters(pipe.unet, p.parameters))
        f_forget = fisher_diagonal(pipe, ctx, forget, params, p.num_samples, p.images_per_prompt, ctx.seed,
                                   noise_seed=ctx.seed)
        f_retain = fisher_diagonal(pipe, ctx, retain, params, p.num_samples, p.images_per_prompt, ctx.seed + 1,
                                   noise_seed=ctx.seed)
        self.stats = dampen(params, f_forget, f_retain, p.selection_weighting, p.dampening_constant)
        return pipe


def selected_parameters(unet, which: str):
    for name, param in unet.named_parameters():
        if which == "unet" or ".attn2." in name:
            yield name, param


@no_grad
def generate_latents(pipe, ctx: RunContext, prompts: list[str], per_prompt: int, seed: int,
                     steps: int | None = None, guidance: float | None = None) -> torch.Tensor:
    """x_0 latents [len(prompts) * per_prompt, C, h, w] from the model itself (the run's sampler).

    The run's scheduler is set explicitly for this and the pipeline's own put back after, so the
    latents do not depend on which scheduler an earlier phase left on the pipeline."""
    import torch

    from ..generation import make_scheduler

    s = ctx.config.sampler
    own = pipe.scheduler
    pipe.scheduler = make_scheduler(s.scheduler, own.config)
    out = []
    try:
        for i, prompt in enumerate(prompts):
            gens = seed_generators([seed * 100_003 + i * 1009 + j for j in range(per_prompt)])
            res = pipe([prompt] * per_prompt, num_inference_steps=steps or s.steps,
                       guidance_scale=s.guidance_scale if guidance is None else guidance,
                       height=ctx.height, width=ctx.width, generator=gens, output_type="latent")
            out.append(res.images.float())
    finally:
        pipe.scheduler = own
    return torch.cat(out)


def training_scheduler(pipe):
    from diffusers import DDPMScheduler

    return DDPMScheduler.from_config(pipe.scheduler.config)


def fisher_diagonal(pipe, ctx: RunContext, prompts: list[str], params: dict[str, torch.nn.Parameter],
                    num_samples: int, per_prompt: int, seed: int, noise_seed: int | None = None
                    ) -> dict[str, torch.Tensor]:
    """Mean squared gradient of the denoising loss over ``num_samples`` (prompt, x_0, t, ε).

    ``seed`` draws the images and which of them each sample uses; ``noise_seed`` (default
    ``seed``) draws the timesteps and noises. Giving the forget and retain sets the same
    ``noise_seed`` pairs their samples' (t, ε): the gradient's scale varies by orders of magnitude
    with t, and with independent draws the ratio F_f / F_r of a few dozen samples mostly measures
    which set happened to draw the low-noise timesteps.
    """
    import torch

    unet = pipe.unet
    latents = generate_latents(pipe, ctx, prompts, per_prompt, seed)
    conds = embed(pipe, prompts).to(unet.device, unet.dtype)
    sched = training_scheduler(pipe)
    rng = np.random.default_rng(seed)
    noise_seed = seed if noise_seed is None else noise_seed
    t_rng = np.random.default_rng(noise_seed)
    gen = torch.Generator("cpu").manual_seed(noise_seed)
    imp = {n: torch.zeros_like(q, dtype=torch.float32) for n, q in params.items()}
    flags = {n: q.requires_grad for n, q in unet.named_parameters()}
    unet.requires_grad_(False)
    for q in params.values():
        q.requires_grad_(True)
    was_training = unet.training
    unet.eval()
    try:
        with torch.enable_grad():
            for _ in range(num_samples):
                i = int(rng.integers(len(latents)))
                x0 = latents[i : i + 1].to(unet.device, unet.dtype)
                noise = torch.randn(x0.shape, generator=gen).to(x0)
                t = torch.tensor([int(t_rng.integers(sched.config.num_train_timesteps))], device=unet.device)
                xt = sched.add_noise(x0, noise, t)
                pred = unet(xt, t, encoder_hidden_states=conds[i // per_prompt : i // per_prompt + 1]).sample
                loss = torch.nn.functional.mse_loss(pred.float(), denoising_target(sched, x0, noise, t).float())
                for q in params.values():
                    q.grad = None
                loss.backward()
                for n, q in params.items():
                    if q.grad is not None:
                        imp[n] += q.grad.float() ** 2
    finally:
        for n, q in unet.named_parameters():
            q.requires_grad_(flags[n])
            q.grad = None
        unet.train(was_training)
    return {n: v / num_samples for n, v in imp.items()}


@no_grad
def dampen(params: dict[str, torch.nn.Parameter], f_forget: dict, f_retain: dict, alpha: float,
           lamb: float) -> dict:
    """Scale the selected parameters in place; returns how many were selected."""
    import torch

    selected = total = 0
    for n, q in params.items():
        ff, fr = f_forget[n], f_retain[n]
        where = ff > alpha * fr
        beta = torch.where(where, (lamb * fr / ff.clamp_min(torch.finfo(ff.dtype).tiny)).clamp(max=1.0),
                           torch.ones_like(ff))
        q.mul_(beta.to(q.dtype))
        selected += int(where.sum())
        total += where.numel()
    return {"selected": selected, "total": total, "fraction": selected / max(total, 1)}
