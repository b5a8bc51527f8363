"""ANT — Auto-steering deNoising Trajectories (Li, Lu, Ren & Kong, ACM MM 2025, "Set You Straight:
Auto-Steering Denoising Trajectories to Sidestep Unwanted Concepts", arXiv:2504.12782; code:
lileyang1210/ANT, the single-concept CompVis scripts ``Single/train-scripts/train_ant_single.py``
and ``generate_mask.py``, and the diffusers multi-concept ``Multiple/train_ant.py``).

ESD-like fine-tuning whose target depends on where the latent is on its denoising trajectory.
Each iteration draws one DDIM step count ``k⁺`` from the first ``before_step`` steps (early
denoising, high noise) and one ``k⁻`` from the remaining ones (middle to late), runs DDIM from the
same noise for ``k⁺`` and ``k⁻`` steps with the model being trained (CFG ``start_guidance`` on the
concept ``c``), and queries a frozen copy (ε*) and the student (ε_θ) at the timesteps reached:

    early  (k⁺):  ε_θ(x, c) → ε*(x, ∅) + η (ε*(x, c) − ε*(x, ∅))      keep the guidance direction
    late   (k⁻):  ε_θ(x, c) → ε*(x, ∅) − η (ε*(x, c) − ε*(x, ∅))      reverse it
    both:         ε_θ(x, ∅) → ε*(x, ∅)                                keep the unconditional field

    L = L⁻ + α₂ U⁻ + α₁ (L⁺ + α₂ U⁺)          (mean squared errors)

so the early, structure-forming part of the score field is preserved and the concept is steered
away only once the layout exists, with no anchor concept.

**Saliency.** Before training, the same loss is run for ``saliency_iterations`` iterations (Adam,
``saliency_lr``) from the original weights once per seed in ``saliency_seeds`` and per prompt in
``saliency_prompts`` (the "augmentation"); each run's summed gradient, in absolute value, keeps the
``saliency_threshold`` fraction of largest entries of every tensor, and the mask is the
intersection of all runs' maps. Training then multiplies every gradient by the mask.

Defaults are the authors' single-concept config (``Single/configs/ant_train.yaml`` and
``ant_gradient.yaml``): full UNet, 250 iterations, Adam lr 5e-4, η = 1, start guidance 3,
``before_step`` 7 of 50 DDIM steps, α₁ = 1, α₂ = 0.5; saliency: 5 seeds × 10 iterations at lr 1e-2,
threshold 0.5. Where the authors' two scripts disagree we follow the paper and the diffusers
script (early = high noise; the unconditional terms carry gradients) — see
docs/techniques/ant.md, "Differences from the authors' code".
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING, Literal

from pydantic import Field, model_validator

from ..components import Supports, kinds
from ..context import RunContext
from ..progress import progress_bar
from . import training as T
from .base import Technique

if TYPE_CHECKING:
    import torch


class ANTParams(T.TrainingParams):
    #: trained parameters (the CompVis script's ``train_method``; ``full`` in the authors' configs)
    train_method: Literal["full", "noxattn", "xattn", "selfattn", "notime"] = "full"
    #: prompts for the concept, one drawn per iteration; default: the concept's name
    prompts: tuple[str, ...] | None = None
    iterations: int = Field(250, ge=1)
    lr: float = Field(5e-4, gt=0)
    #: η: the guidance kept (early) / reversed (late)
    negative_guidance: float = Field(1.0, ge=0)
    #: CFG scale of the partial DDIM trajectories
    start_guidance: float = Field(3.0, ge=0)
    ddim_steps: int = Field(50, ge=2)
    #: the first ``before_step`` DDIM steps (from noise) keep the guidance direction; the rest reverse it
    before_step: int = Field(7, ge=1)
    #: weight of the early-stage terms
    alpha_1: float = Field(1.0, ge=0)
    #: weight of the unconditional-preservation terms
    alpha_2: float = Field(0.5, ge=0)
    #: train only the salient weights (the single-concept method); false: every selected weight
    saliency: bool = True
    #: prompts of the saliency runs; default: the concept's name and synonyms
    saliency_prompts: tuple[str, ...] | None = None
    saliency_seeds: tuple[int, ...] = (24, 42, 98, 403, 3407)
    saliency_iterations: int = Field(10, ge=1)
    saliency_lr: float = Field(1e-2, gt=0)
    #: fraction of each tensor's entries (largest accumulated |gradient|) a saliency run keeps
    saliency_threshold: float = Field(0.5, gt=0, le=1)

    @model_validator(mode="after")
    def _check(self):
        if self.before_step >= self.ddim_steps:
            raise ValueError(f"before_step ({self.before_step}) must be below ddim_steps ({self.ddim_steps})")
        if self.saliency and not self.saliency_seeds:
            raise ValueError("saliency_seeds: at least one seed when saliency is on")
        return self


class ANT(Technique):
    description = ("ANT: fine-tune the UNet to keep the guidance direction early and reverse it in mid-to-late "
                   "denoising steps, on salient weights only.")
    paper = "Li et al., ACM MM 2025 (Set You Straight)"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = ANTParams

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        T.seed_everything(ctx.seed)
        words = T.concept_words(ctx, p.prompts)
        unet = pipe.unet
        pipe.text_encoder.requires_grad_(False)
        teacher = T.frozen_copy(unet)
        amp = T.setup_execution(pipe, p)
        null = T.encode(pipe, [""])
        shape = (1, *T.latent_shape(pipe, ctx.height, ctx.width))
        keep = T.unet_param_filter(p.train_method)
        mask = None
        if p.saliency:
            sal_words = list(p.saliency_prompts or (ctx.concept.name, *ctx.concept.synonyms))
            mask = saliency_mask(unet, teacher, pipe, sal_words, null, p, shape, keep, amp)
        params = T.select_params(unet, keep)
        names = [n for n, q in unet.named_parameters() if q.requires_grad]
        emb = dict(zip(words, T.encode(pipe, words), strict=True))
        gen, rng = T.seed_everything(ctx.seed), random.Random(ctx.seed)
        opt = T.make_optimizer(params, p.lr)
        sched = T.ddim_scheduler(pipe, p.ddim_steps)
        unet.train()
        with progress_bar("ANT", p.iterations) as advance:
            for _ in range(p.iterations):
                loss = ant_loss(unet, teacher, sched, emb[rng.choice(words)], null, p, shape, gen, rng, amp)
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                if mask is not None:
                    for n, q in zip(names, params, strict=True):
                        if q.grad is not None:
                            q.grad.mul_(mask[n])
                amp.step(opt)
                advance(1, loss=f"{loss.item():.4f}")
        unet.eval()
        unet.requires_grad_(False)
        return pipe


def draw_steps(rng: random.Random, p: ANTParams) -> tuple[int, int]:
    """``(k⁺, k⁻)``: DDIM steps from noise of the early latent (``< before_step``) and of the
    mid-to-late one (``≥ before_step``)."""
    return rng.randrange(p.before_step), rng.randrange(p.before_step, p.ddim_steps)


def ant_terms(unet, teacher, x_plus, t_plus, x_minus, t_minus, cond, null, eta: float, autocast=None):
    """The four mean squared errors ``(L⁺, U⁺, L⁻, U⁻)`` at the early latent ``x_plus`` (timestep
    ``t_plus``) and the late latent ``x_minus``; the student's predictions carry gradients."""
    import torch
    from torch.nn.functional import mse_loss

    from ..models.sampling import predict

    autocast = autocast or T.Precisioned("cpu").autocast
    x = torch.cat([x_plus, x_plus, x_minus, x_minus])
    t = torch.tensor([int(t_plus)] * 2 + [int(t_minus)] * 2, device=x.device)
    c = torch.cat([null, cond, null, cond])
    with torch.no_grad():
        e0_p, ec_p, e0_m, ec_m = predict(teacher, x, t, c, autocast).chunk(4)
    s0_p, sc_p, s0_m, sc_m = predict(unet, x, t, c, autocast).chunk(4)
    keep = e0_p + eta * (ec_p - e0_p)
    reverse = e0_m - eta * (ec_m - e0_m)
    return mse_loss(sc_p, keep), mse_loss(s0_p, e0_p), mse_loss(sc_m, reverse), mse_loss(s0_m, e0_m)


def combine(l_plus, u_plus, l_minus, u_minus, alpha_1: float, alpha_2: float):
    """``L⁻ + α₂ U⁻ + α₁ (L⁺ + α₂ U⁺)`` (the authors' weighting)."""
    return l_minus + alpha_2 * u_minus + alpha_1 * (l_plus + alpha_2 * u_plus)


def ant_loss(unet, teacher, sched, cond, null, p: ANTParams, shape, gen, rng, amp) -> torch.Tensor:
    """One ANT loss: both partial trajectories from one noise draw, sampled by the student."""
    k_plus, k_minus = draw_steps(rng, p)
    start = T.randn(shape, gen, unet.device)
    was_training = unet.training
    unet.eval()
    cond = cond.reshape(1, *cond.shape[-2:])
    x_plus = T.ddim_sample_until(unet, sched, cond, null, p.start_guidance, start, k_plus, amp.autocast)
    x_minus = T.ddim_sample_until(unet, sched, cond, null, p.start_guidance, start, k_minus, amp.autocast)
    unet.train(was_training)
    terms = ant_terms(unet, teacher, x_plus, sched.timesteps[k_plus], x_minus, sched.timesteps[k_minus], cond,
                      null, p.negative_guidance, amp.autocast)
    return combine(*terms, p.alpha_1, p.alpha_2)


def top_fraction(score: torch.Tensor, fraction: float) -> torch.Tensor:
    """Boolean mask of the ``int(numel · fraction)`` largest entries of ``score`` (ties broken by
    position, as a stable sort would)."""
    import torch

    flat = score.flatten()
    k = int(flat.numel() * fraction)
    order = torch.argsort(-flat, stable=True)
    out = torch.zeros(flat.numel(), dtype=torch.bool, device=flat.device)
    out[order[:k]] = True
    return out.view_as(score)


def saliency_mask(unet, teacher, pipe, words, null, p: ANTParams, shape, keep, amp) -> dict[str, torch.Tensor]:
    """The augmentation-enhanced saliency map: per (seed, prompt), a fresh copy of the original
    UNet is trained ``saliency_iterations`` ANT iterations while its gradients are summed; the
    per-tensor top-``saliency_threshold`` maps of |sum| are intersected over all runs."""
    import copy

    import torch

    mask: dict[str, torch.Tensor] | None = None
    sched = T.ddim_scheduler(pipe, p.ddim_steps)
    emb = dict(zip(words, T.encode(pipe, words), strict=True))
    runs = [(s, w) for s in p.saliency_seeds for w in words]
    with progress_bar("ANT saliency", len(runs) * p.saliency_iterations) as advance:
        for seed, word in runs:
            student = copy.deepcopy(teacher)
            params = T.select_params(student, keep)
            names = [n for n, q in student.named_parameters() if q.requires_grad]
            total = [torch.zeros_like(q) for q in params]
            gen, rng = T.seed_everything(seed), random.Random(seed)
            opt = T.make_optimizer(params, p.saliency_lr)
            student.train()
            for _ in range(p.saliency_iterations):
                loss = ant_loss(student, teacher, sched, emb[word], null, p, shape, gen, rng, amp)
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                unscale = 1.0 / amp.scaler.get_scale() if amp.scaler else 1.0  # fp16: the true gradient
                for acc, q in zip(total, params, strict=True):
                    if q.grad is not None:
                        acc.add_(q.grad, alpha=unscale)
                amp.step(opt)
                advance(1, loss=f"{loss.item():.4f}")
            run = {n: top_fraction(g.abs(), p.saliency_threshold) for n, g in zip(names, total, strict=True)}
            mask = run if mask is None else {n: mask[n] & run[n] for n in mask}
            del student, opt, total
    assert mask is not None
    return {n: m.to(unet.device, unet.dtype) for n, m in mask.items()}
