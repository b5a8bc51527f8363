"""TRCE — Towards Reliable malicious Concept Erasure (Chen, Guo, Wang, Zhang, Nie & Liu, ICCV 2025,
"TRCE: Towards Reliable Malicious Concept Erasure in Text-to-Image Diffusion Models",
arXiv:2503.07389; code: ddgoodgood/TRCE, ``run_trce_stage1.py``, ``run_trce_stage2.py``,
``stage2_data_preparation.py``, ``src/cfr_utils.py``).

Two stages.

**Stage 1 — closed-form edit of the [EoT] mapping.** For every trigger concept (the erased
concept and its synonyms) and each of ``augment_num`` prompt templates, the trigger prompt and
the same template filled with the safe concept are encoded. The columns of the trigger prompt at
four kinds of position — [SoT] (0), the first [EoT] (right after the last word), the last [EoT]
(position 76; weighted by the number of padding positions after the first [EoT]) and the keyword's
own tokens (mapped to the safe prompt's last [EoT]) — are mapped to the *original* projections'
outputs of the safe prompt's matching columns, with per-kind weights ``token_weights`` (the
authors' default (0, 1, 0, 0): only the first [EoT], which the paper identifies as the token that
carries the prompt's implicit malicious semantics). Every cross-attention key and value
projection is solved in closed form,

    W' = (λ W + (1/P) Σ_pairs Σ_i w_i W c_safe,i c_iᵀ + s_p (1/N) Σ_prior W c cᵀ)
         (λ I + (1/P) Σ_pairs Σ_i w_i c_i c_iᵀ + s_p (1/N) Σ_prior c cᵀ)⁻¹,

with λ = 0 and a prior term over all 77 columns of N preserve prompts (the authors' cached
MS-COCO prior of 30 000 captions, divided by 3·10⁴), scaled by ``edit_preserve_scale`` = 0.01.

**Stage 2 — contrastive refinement of the early denoising steps.** Trajectories are sampled with
the *original* model (DDIM, 50 steps, η = 0, guidance 3) from "a photo of {trigger}" (5 per
trigger), and unconditional ones for regularisation. Each iteration takes a latent of one trigger
trajectory after step ``k`` ∈ [0, ``max_early_timestep``] and a timestep drawn in that step's
bin; the original model gives ``prefer = ε(safe) + g (ε(safe) − ε(∅))`` and
``reject = ε(trigger) + g (ε(trigger) − ε(∅))`` with g = 15. The stage-1 model's predictions for
the trigger prompt and for the empty prompt are each pushed by a hinge (triplet) loss
``max(0, β (‖ε_θ − prefer‖² − ‖ε_θ − reject‖² + margin))`` (averaged over the two), plus
``refine_preserve_scale`` × the MSE between the trained model and the frozen stage-1 model on
unconditional predictions along ``regularization_batch_size`` unconditional trajectories (any
step). Only self-attention (``attn1``) and the cross-attention queries (``attn2.to_q``) train,
AdamW (lr 1e-6, weight decay 0.01), batch 1, 3 epochs over the trigger trajectories.

Defaults are the authors' ``config/stage1/stage1_sexual_default.yaml`` and
``config/stage2/stage2_sexual_default.yaml``. Deviations (docs/techniques/trce.md lists them with
their effect): token positions are read from the tokenizer (the authors count words with
``str.split``); the prior is built from the model world's caption corpus (the toy world's training
captions) with the captions naming a trigger word removed, or the retain concepts through the
templates where the world has no corpus (open vocabulary: no MS-COCO offline); gradients are
zeroed every iteration (the authors' script never calls ``zero_grad``); the prompt templates are
ours (MACE's lists); only the unconditional trajectories the script ever reads are generated.
"""

from __future__ import annotations

import random
from typing import TYPE_CHECKING

from pydantic import Field, model_validator

from .._torch import no_grad
from ..components import Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..progress import progress_bar
from . import training as T
from ._closed_form import Normal, cross_attention_projections, embed, set_weight, solve, tokenize
from .base import Technique
from .mace import OBJECT_TEMPLATES, STYLE_TEMPLATES

if TYPE_CHECKING:
    import torch

#: the authors' number of MS-COCO captions in the cached prior (their cache is divided by 3e4)
COCO_PRIOR_SIZE = 30000


class TRCEParams(T.TrainingParams):
    # -- what is erased and what it becomes -------------------------------------------------
    #: trigger concepts; default: the run's concept and its synonyms
    erase: tuple[str, ...] | None = None
    #: the safe concept(s) the triggers map to: one for all, or one per trigger; default: the
    #: concept's anchor, else " " (the authors' "sexual" config maps every trigger to
    #: "a person wearing clothes")
    safe: tuple[str, ...] | None = None
    # -- stage 1 -----------------------------------------------------------------------------
    #: prompt templates with ``{}``; None = ours for the concept's kind (as MACE's)
    templates: tuple[str, ...] | None = None
    #: augment the triggers with templates (else only "A photo of {}")
    augment: bool = True
    augment_num: int = Field(15, ge=1)
    #: weights of [SoT], first [EoT], last [EoT] (× padding count), keyword tokens
    token_weights: tuple[float, ...] = (0.0, 1.0, 0.0, 0.0)
    #: s_p of the prior term (a mean over the preserve prompts)
    edit_preserve_scale: float = Field(0.01, ge=0.0)
    lamb: float = Field(0.0, ge=0.0)
    #: prompts of the prior; None = the world's caption corpus, else the retain concepts
    preserve: tuple[str, ...] | None = None
    #: how many corpus captions the prior uses (the authors: 30 000 MS-COCO captions)
    preserve_prompts: int = Field(COCO_PRIOR_SIZE, ge=1)
    with_to_k: bool = True
    # -- stage 2 -----------------------------------------------------------------------------
    #: run the contrastive refinement (False = stage 1 only)
    stage2: bool = True
    learning_rate: float = Field(1e-6, gt=0.0)
    weight_decay: float = Field(0.01, ge=0.0)
    epochs: int = Field(3, ge=1)
    #: g of the prefer / reject targets
    guidance: float = Field(15.0, ge=0.0)
    refine_preserve_scale: float = Field(100.0, ge=0.0)
    beta: float = Field(1.0, gt=0.0)
    margin: float = Field(0.01, ge=0.0)
    #: last trajectory step (0-based, of ``trajectory_steps``) the target loss trains on
    max_early_timestep: int = Field(25, ge=0)
    regularization_batch_size: int = Field(4, ge=1)
    #: trajectories per trigger prompt, and unconditional trajectories (at most the ones used)
    images_per_prompt: int = Field(5, ge=1)
    regularization_samples: int = Field(2000, ge=1)
    data_template: str = "a photo of {}"
    data_guidance: float = Field(3.0, ge=0.0)
    trajectory_steps: int = Field(50, ge=1)

    @model_validator(mode="after")
    def _check(self):
        if self.erase is not None and not [e for e in self.erase if e.strip()]:
            raise ValueError("erase: the list of trigger concepts is empty")
        if self.safe is not None and not self.safe:
            raise ValueError("safe: give one safe concept, or one per trigger")
        if self.erase is not None and self.safe is not None and len(self.safe) not in (1, len(self.erase)):
            raise ValueError("safe: give one safe concept, or one per trigger")
        if self.templates is not None and (not self.templates or any("{}" not in t for t in self.templates)):
            raise ValueError("templates: give at least one template, each with a '{}' for the concept")
        if len(self.token_weights) != 4:
            raise ValueError("token_weights: give four weights ([SoT], first [EoT], last [EoT], keyword)")
        if "{}" not in self.data_template:
            raise ValueError("data_template: needs a '{}' for the concept")
        if self.max_early_timestep >= self.trajectory_steps:
            raise ValueError("max_early_timestep: must be below trajectory_steps")
        return self


class TRCE(Technique):
    description = ("TRCE: closed-form edit of the [EoT] mapping in cross-attention, then contrastive refinement "
                   "of the early denoising steps.")
    paper = "Chen et al., ICCV 2025"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = TRCEParams

    def __init__(self, params) -> None:
        super().__init__(params)
        self.losses: list[tuple[float, float]] = []

    # -- texts ------------------------------------------------------------------------------
    def pairs(self, ctx: RunContext) -> list[tuple[str, str]]:
        """(trigger, safe concept) pairs."""
        p = self.params
        erase = [e for e in (p.erase or (ctx.concept.name, *ctx.concept.synonyms)) if e.strip()]
        safe = list(p.safe) if p.safe is not None else [T.default_anchor(ctx) or " "]
        if len(safe) not in (1, len(erase)):
            raise UserError("technique 'trce': safe: give one safe concept, or one per trigger")
        return list(zip(erase, safe * len(erase) if len(safe) == 1 else safe, strict=True))

    def templates(self, ctx: RunContext) -> list[str]:
        p = self.params
        if not p.augment:
            return ["A photo of {}"]
        base = p.templates or (STYLE_TEMPLATES if ctx.concept.kind == "style" else OBJECT_TEMPLATES)
        return list(base)[: p.augment_num]

    def preserve_prompts(self, ctx: RunContext) -> list[str]:
        """Prompts of the prior term: given, else the world's caption corpus without captions that
        name a trigger (MS-COCO, the authors' prior, rarely names the malicious concept), else the
        retain concepts through the templates."""
        p = self.params
        if p.preserve is not None:
            return [t for t in p.preserve if t.strip()]
        corpus = ctx.world.corpus(p.preserve_prompts, ctx.seed)
        if corpus:
            words = [e.lower() for e, _ in self.pairs(ctx)]
            return [c for c in corpus if not any(_names(c.lower(), w) for w in words)]
        return [t.format(r) for r in ctx.concept.retain for t in self.templates(ctx)]

    # -- the edit ---------------------------------------------------------------------------
    def apply(self, pipe, ctx: RunContext):
        p = self.params
        pairs = self.pairs(ctx)
        original = T.frozen_copy(pipe.unet) if p.stage2 else None
        data = None
        if p.stage2:  # trajectories of the original model, before the edit
            data = trajectories(pipe, original, ctx, pairs, p)
        edit_eot(pipe, pairs, self.templates(ctx), self.preserve_prompts(ctx), p)
        if p.stage2:
            refine(pipe, original, data, p, ctx.seed, self.losses)
        return pipe


def _names(text: str, word: str) -> bool:
    return f" {word} " in f" {text} "


# -- stage 1 --------------------------------------------------------------------------------


def eot_columns(pipe, pairs: list[tuple[str, str]], weights) -> tuple[list, list, list]:
    """For each (trigger prompt, safe prompt): the trigger's columns at [SoT], first [EoT], last
    [EoT] and its keyword tokens, the safe prompt's matching columns, and each column's weight
    (``token_weights`` × the authors' base weights 1, 1, #padding positions, 1)."""
    import torch

    old = [o for o, _, _ in pairs]
    new = [n for _, n, _ in pairs]
    tok_old, tok_new = tokenize(pipe, old), tokenize(pipe, new)
    e_old, e_new = embed(pipe, old), embed(pipe, new)
    length = e_old.shape[1]
    ctxs, tgts, ws = [], [], []
    for k, (_, _, keyword) in enumerate(pairs):
        eot_old = int(tok_old.attention_mask[k].sum()) - 1
        eot_new = int(tok_new.attention_mask[k].sum()) - 1
        i_old = [0, eot_old, length - 1]
        i_new = [0, eot_new, length - 1]
        w = [weights[0], weights[1], weights[2] * (length - 1 - eot_old)]
        key = keyword_positions(tok_old.input_ids[k, 1:eot_old].tolist(), pipe.tokenizer(keyword).input_ids[1:-1])
        i_old += key
        i_new += [length - 1] * len(key)
        w += [weights[3]] * len(key)
        ctxs.append(e_old[k, i_old])
        tgts.append(e_new[k, i_new])
        ws.append(torch.tensor(w, dtype=torch.float64))
    return ctxs, tgts, ws


def keyword_positions(ids: list[int], keyword: list[int]) -> list[int]:
    """Positions (1-based, after [SoT]) of the first occurrence of ``keyword`` in ``ids``."""
    n = len(keyword)
    for i in range(len(ids) - n + 1):
        if n and ids[i: i + n] == keyword:
            return list(range(i + 1, i + 1 + n))
    return []


@no_grad
def edit_eot(pipe, pairs: list[tuple[str, str]], templates: list[str], preserve: list[str], p: TRCEParams) -> None:
    """Stage 1: the closed-form edit of every cross-attention key / value projection."""
    prompts = [(t.format(o), t.format(n), o) for o, n in pairs for t in templates]
    ctxs, tgts, ws = eot_columns(pipe, prompts, p.token_weights)
    projs = cross_attention_projections(pipe.unet, p.with_to_k, "technique 'trce'")
    gram = prior_gram(pipe, preserve)
    for q in projs:
        w = q.weight.detach().double()
        normal = Normal(*w.shape, device=w.device)
        for c, tgt, wt in zip(ctxs, tgts, ws, strict=True):
            c64, v = c.to(w), tgt.to(w) @ w.T
            wt = wt.to(w)
            normal.vc += (v * wt[:, None]).T @ c64 / len(ctxs)
            normal.cc += (c64 * wt[:, None]).T @ c64 / len(ctxs)
        if preserve:  # the prior's targets are the original outputs: Σ (W c) cᵀ = W Σ c cᵀ
            scale = p.edit_preserve_scale / len(preserve)
            normal.vc += scale * w @ gram.to(w)
            normal.cc += scale * gram.to(w)
        set_weight(q, solve(w, normal, p.lamb))


@no_grad
def prior_gram(pipe, prompts: list[str], batch: int = 256):
    """``Σ c cᵀ`` (float64, d × d) over all 77 columns of every prompt: the prior term of every
    projection, whose targets are the original outputs ``W c``, is ``W G`` and ``G``."""
    import torch

    d = pipe.text_encoder.config.hidden_size
    gram = torch.zeros(d, d, dtype=torch.float64, device=pipe.text_encoder.device)
    for i in range(0, len(prompts), batch):
        c = embed(pipe, prompts[i: i + batch]).reshape(-1, d).double()
        gram += c.T @ c
    return gram


# -- stage 2 --------------------------------------------------------------------------------


@no_grad
def record_trajectory(unet, sched, cond, uncond, guidance: float, start, stop: int) -> list:
    """DDIM (η = 0) with classifier-free guidance from ``start``; the latent after each of the
    first ``stop`` steps (on the CPU), ``[stop][N, C, h, w]``."""
    import torch

    x = start * sched.init_noise_sigma
    n = x.shape[0]
    cond, uncond = cond.expand(n, -1, -1), uncond.expand(n, -1, -1)
    out = []
    for t in sched.timesteps[:stop]:
        e_u, e_c = T.predict(unet, torch.cat([x, x]), t, torch.cat([uncond, cond])).chunk(2)
        x = sched.step(e_u + guidance * (e_c - e_u), t, x).prev_sample
        out.append(x.detach().cpu())
    return out


def trajectories(pipe, unet, ctx: RunContext, pairs: list[tuple[str, str]], p: TRCEParams) -> dict:
    """The stage-2 data, sampled with the original model: per trigger trajectory the trigger and
    safe prompts and its latents after steps 0..``max_early_timestep``; the unconditional
    trajectories the regularisation reads (``regularization_batch_size`` per trigger trajectory
    and iteration index, at most ``regularization_samples``), all their steps."""
    import torch

    gen = torch.Generator().manual_seed(ctx.seed)
    sched = T.ddim_scheduler(pipe, p.trajectory_steps)
    shape = T.latent_shape(pipe, ctx.height, ctx.width)
    dev = pipe.unet.device
    null = T.encode(pipe, [""])
    neg = []
    n_reg = min(p.regularization_samples, p.regularization_batch_size * len(pairs) * p.images_per_prompt)
    with progress_bar("TRCE trajectories", len(pairs) * p.images_per_prompt + n_reg) as advance:
        for trigger, safe in pairs:
            prompt, safe_prompt = p.data_template.format(trigger), p.data_template.format(safe)
            cond = T.encode(pipe, [prompt])
            start = T.randn((p.images_per_prompt, *shape), gen, dev)
            steps = record_trajectory(unet, sched, cond, null, p.data_guidance, start, p.max_early_timestep + 1)
            for j in range(p.images_per_prompt):
                neg.append({"prompt": prompt, "safe": safe_prompt, "latents": [s[j: j + 1] for s in steps]})
            advance(p.images_per_prompt)
        reg = []
        for i in range(0, n_reg, 8):  # the script's unconditional samples: any guidance on "" vs "" is ε(∅)
            b = min(8, n_reg - i)
            steps = record_trajectory(unet, sched, null, null, 1.0, T.randn((b, *shape), gen, dev),
                                      p.trajectory_steps)
            reg += [[s[j: j + 1] for s in steps] for j in range(b)]
            advance(b)
    return {"neg": neg, "reg": reg, "timesteps": p.trajectory_steps,
            "train_steps": sched.config.num_train_timesteps}


def step_timestep(k: int, steps: int, train_steps: int, rng: random.Random) -> int:
    """A timestep in the bin of trajectory step ``k``: ``[(S-1-k)·s, (S-k)·s)`` with ``s = T/S``
    (the authors' ``randint((49-k)*20, (50-k)*20)`` for S = 50, T = 1000)."""
    stride = train_steps // steps
    return rng.randrange((steps - 1 - k) * stride, (steps - k) * stride)


def contrastive_loss(student, x, t, cond, prefer, reject, beta: float, margin: float):
    """``max(0, β (‖ε_θ(x, t, cond) − prefer‖² − ‖ε_θ − reject‖² + margin))`` (means over pixels)."""
    e = T.predict(student, x, t, cond)
    d_pref = (e - prefer).pow(2).mean(dim=(1, 2, 3))
    d_rej = (e - reject).pow(2).mean(dim=(1, 2, 3))
    return (beta * (d_pref - d_rej + margin)).clamp(min=0).mean()


def trce_targets(reference, x, t, neg, safe, null, g: float):
    """(prefer, reject) of the original model: ``ε(c) + g (ε(c) − ε(∅))`` for the safe and the
    trigger prompt."""
    import torch

    with torch.no_grad():
        e_neg, e_safe, e_null = (T.predict(reference, x, t, c) for c in (neg, safe, null))
    return e_safe + g * (e_safe - e_null), e_neg + g * (e_neg - e_null)


def trainable(name: str) -> bool:
    """The authors' selection: every self-attention parameter and the cross-attention queries."""
    return "attn1" in name or ("attn2" in name and "to_q" in name)


def refine(pipe, original, data: dict, p: TRCEParams, seed: int, losses: list) -> None:
    """Stage 2 on ``pipe.unet`` (the stage-1 model): the contrastive loss against the original
    model's targets plus the regularisation towards the frozen stage-1 model."""
    import torch

    rng = random.Random(seed)
    T.seed_everything(seed)
    unet = pipe.unet
    stage1 = T.frozen_copy(unet)
    params = T.select_params(unet, trainable)
    pipe.text_encoder.requires_grad_(False)
    amp = T.setup_execution(pipe, p)
    opt = T.make_optimizer(params, p.learning_rate, "adamw", betas=(0.9, 0.999), weight_decay=p.weight_decay,
                           eps=1e-8)
    null = T.encode(pipe, [""])
    emb: dict[str, torch.Tensor] = {}

    def enc(prompt: str):
        if prompt not in emb:
            emb[prompt] = T.encode(pipe, [prompt])
        return emb[prompt]

    dev = unet.device
    S, TT = data["timesteps"], data["train_steps"]
    neg, reg = data["neg"], data["reg"]
    unet.train()
    with progress_bar("TRCE refinement", p.epochs * len(neg)) as advance:
        for _ in range(p.epochs):
            for i, item in enumerate(neg):
                k = rng.randint(0, p.max_early_timestep)
                t = step_timestep(k, S, TT, rng)
                x = item["latents"][k].to(dev)
                cond, safe = enc(item["prompt"]), enc(item["safe"])
                prefer, reject = trce_targets(original, x, t, cond, safe, null, p.guidance)
                with amp.autocast():
                    target = (contrastive_loss(unet, x, t, cond, prefer, reject, p.beta, p.margin)
                              + contrastive_loss(unet, x, t, null, prefer, reject, p.beta, p.margin)) / 2
                    keep = 0.0
                    for j in range(p.regularization_batch_size):
                        traj = reg[(i * p.regularization_batch_size + j) % len(reg)]
                        k2 = rng.randrange(S)
                        t2 = step_timestep(k2, S, TT, rng)
                        x2 = traj[k2].to(dev)
                        with torch.no_grad():
                            ref = T.predict(stage1, x2, t2, null)
                        keep = keep + (T.predict(unet, x2, t2, null) - ref).pow(2).mean()
                    keep = keep / p.regularization_batch_size
                    loss = target + p.refine_preserve_scale * keep
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt)
                losses.append((float(target.detach()), float(keep.detach())))
                advance(1, loss=f"{float(loss.detach()):.4f}")
    unet.eval()
    unet.requires_grad_(False)
