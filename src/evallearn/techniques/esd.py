"""ESD — Erased Stable Diffusion (Gandikota, Materzyńska, Fiotto-Kaufman & Bau, ICCV 2023,
"Erasing Concepts from Diffusion Models", arXiv:2303.07345; code: rohitgandikota/erasing, the
paper-era CompVis ``train-scripts/train-esd.py`` and the later diffusers ``esd_sd.py``).

The UNet is fine-tuned so that its prediction for the concept ``c`` imitates a *frozen copy* of
the original model guided away from ``c``:

    ε_θ(x_t, c, t)  →  ε*(x_t, ∅, t) − η · (ε*(x_t, c, t) − ε*(x_t, ∅, t))

``x_t`` is not noised data: each iteration draws a DDIM step ``k`` uniformly from the
``ddim_steps`` sampling steps and runs DDIM (η = 0, classifier-free guidance ``start_guidance``,
prompt ``c``) from pure noise for ``k`` steps with the model *being trained* (as in the
paper-era script: "emb_p seems to work better"), then queries both models at the DDIM timestep
``x_t`` has reached, as the authors' diffusers rewrite does. (The CompVis script's sampler stops
when its index reaches ``k`` counted from the clean end, so it runs ``51 − k`` steps, and then
queries a DDPM step drawn from ``[k/ddim_steps·1000, (k+1)/ddim_steps·1000)``: a noise level
39–58 steps above the latent's; docs/techniques/esd.md has the table.)
``sample_with: teacher`` uses the frozen model for the partial trajectory, as the diffusers
rewrite does.

Variants (``train_method``): ``xattn`` (ESD-x, cross-attention only), ``noxattn`` (ESD-u,
everything except cross-attention, the time embedding and the output layers), ``full``, plus
the script's ``selfattn`` and ``xattn-strict`` (keys and values only). The paper recommends
ESD-x for styles and ESD-u for objects and nudity, which is the default by concept kind.
Paper defaults: 1000 iterations, Adam lr 1e-5, batch 1, η = 1, start guidance 3, 50 DDIM steps.
``prompts`` is the script's separator list: several prompts for the concept, one sampled per
iteration.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from ..progress import progress_bar
from . import training as T
from .base import Technique

if TYPE_CHECKING:
    import torch


class ESDParams(T.TrainingParams):
    #: None = by concept kind, as the paper recommends: ESD-x for styles, ESD-u otherwise
    train_method: Literal["xattn", "noxattn", "full", "selfattn", "xattn-strict"] | None = None
    #: prompts for the concept, one drawn per iteration (the script's separator list);
    #: default: the concept's name
    prompts: tuple[str, ...] | None = None
    iterations: int = Field(1000, ge=1)
    lr: float = Field(1e-5, gt=0)
    negative_guidance: float = Field(1.0, ge=0)
    start_guidance: float = Field(3.0, ge=0)
    ddim_steps: int = Field(50, ge=1)
    batch_size: int = Field(1, ge=1)
    #: which model runs the partial DDIM trajectory: the trained model (paper-era script) or the
    #: frozen copy (the authors' diffusers rewrite)
    sample_with: Literal["student", "teacher"] = "student"


def method_for(params: ESDParams, concept_kind: str) -> str:
    if params.train_method:
        return params.train_method
    return "xattn" if concept_kind == "style" else "noxattn"


class ESD(Technique):
    description = "Erased Stable Diffusion: fine-tune the UNet to negatively guide away from the concept."
    paper = "Gandikota et al., ICCV 2023"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = ESDParams

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        gen = T.seed_everything(ctx.seed)
        rng = random.Random(ctx.seed)
        words = T.concept_words(ctx, p.prompts)
        unet = pipe.unet
        teacher = T.frozen_copy(unet)
        params = T.select_params(unet, T.unet_param_filter(method_for(p, ctx.concept.kind)))
        pipe.text_encoder.requires_grad_(False)
        amp = T.setup_execution(pipe, p)
        opt = T.make_optimizer(params, p.lr)
        sched = T.ddim_scheduler(pipe, p.ddim_steps)
        emb = dict(zip(words, T.encode(pipe, words), strict=True))
        null = T.encode(pipe, [""])
        shape = (p.batch_size, *T.latent_shape(pipe, ctx.height, ctx.width))
        unet.train()
        with progress_bar(f"ESD-{method_for(p, ctx.concept.kind)}", p.iterations) as advance:
            for _ in range(p.iterations):
                loss = esd_step(unet, teacher, sched, emb[rng.choice(words)][None], null, p, shape, gen,
                                rng, amp)
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt)
                advance(1, loss=f"{loss.item():.4f}")
        unet.eval()
        unet.requires_grad_(False)
        return pipe


def esd_step(unet, teacher, sched, cond, null, p, shape, gen, rng, amp) -> torch.Tensor:
    """One ESD loss: partial DDIM trajectory to a random step, frozen teacher target, student
    prediction (:mod:`evallearn.techniques.training.objectives`)."""
    k = rng.randrange(p.ddim_steps)
    t = sched.timesteps[k]
    sampler = unet if p.sample_with == "student" else teacher
    x = T.esd_trajectory(unet, sampler, sched, cond, null, p.start_guidance, shape, gen, k, amp.autocast)
    target = T.esd_target(teacher, x, t, cond, null, p.negative_guidance, amp.autocast)
    return T.esd_loss(unet, x, t, cond, target, amp.autocast)
