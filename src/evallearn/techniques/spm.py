"""SPM — concept-SemiPermeable Membrane (Lyu, Yang, Hong, Chen, Huang, Han & Ding, CVPR 2024,
"One-dimensional Adapter to Rule Them All: Concepts, Diffusion Models and Erasing Applications",
arXiv:2312.16145; code: Con6924/SPM, ``train_spm.py``, ``src/models/spm.py``,
``src/engine/sampling.py``, ``src/configs/prompt.py`` and ``infer_spm.py``).

A rank-``rank`` adapter ("membrane") ``ΔW = (α / r) · up · down`` is added to every Linear and
Conv2d inside the UNet's transformer blocks (``proj_in``, ``proj_out``, self- and
cross-attention projections, feed-forward); the UNet itself stays frozen.

**Training** (per iteration, as ``train_spm.py``): a target prompt ``c`` is drawn; DDIM (30
steps, CFG 3, adapter on) runs from noise for ``k ∈ [1, 29]`` steps; at the 1000-step timestep
``t = 999 − ⌊1000 k / 30⌋`` the adapted model's prediction for ``c`` is regressed onto the
original model's negatively guided one,

    L_erase = ‖ε_θ+Δ(x, c) − [ε_θ(x, ∅) − g (ε_θ(x, c) − ε_θ(x, ∅))]‖²,

and **latent anchoring** keeps the adapted model equal to the original on anchors sampled over
the whole text-embedding space: ``sampling_batch_size`` Gaussian directions with the shape of
the target's 77×d embedding, each accepted with probability ``1 − cos(target, direction)``
(anchors far from the concept are favoured) and scaled to ``U[0.8, 1.2] · ‖target‖``;

    L = L_erase + la_strength · ‖ε_θ+Δ(x, A) − ε_θ(x, A)‖².

AdamW (8-bit in the authors' code), lr 1e-4, cosine schedule with 3 hard restarts and 500 warm-up
steps, 3000 iterations, rank 1, α = 1, la_strength 1000, 4 anchors.

**Facilitated transport** (inference, ``infer_spm.py``): each prompt gets a weight
``γ = max over the erased prompts of max(cos(E_prompt, E_erased), |tokens ∩ erased tokens| /
|erased tokens|)`` (flattened 77×d text-encoder outputs; special tokens excluded) and the adapter
of that sample is scaled by it: the authors multiply *both* factors by γ, so the low-rank update is
applied with weight γ². Prompts far from the concept pass the membrane nearly unchanged. The
weight is computed per sample, for the conditional and the unconditional pass alike, so a request
gives the same image alone or in a batch.

The adapters are extra parameters of the UNet (``<layer>.spm.down/up``): they are the cached
edit. Code that calls the UNet outside the pipeline (attacks, probes) gets the adapter at weight 1.
"""

from __future__ import annotations

import functools
import math
import random
from collections.abc import Sequence
from typing import TYPE_CHECKING, Literal

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from ..progress import progress_bar
from . import training as T
from ._guided import Guidance, guided
from .base import Technique

if TYPE_CHECKING:
    import torch


class SPMParams(T.TrainingParams):
    #: erased (target) prompts, one drawn per iteration; default: the concept's name
    prompts: tuple[str, ...] | None = None
    rank: int = Field(1, ge=1)
    alpha: float = Field(1.0, gt=0)
    iterations: int = Field(3000, ge=1)
    lr: float = Field(1e-4, gt=0)
    #: AdamW weight decay (bitsandbytes' AdamW8bit default, which the authors use)
    weight_decay: float = Field(1e-2, ge=0)
    lr_scheduler: Literal["cosine_with_restarts", "cosine", "linear", "constant", "constant_with_warmup"] = (
        "cosine_with_restarts")
    lr_warmup_steps: int = Field(500, ge=0)
    lr_num_cycles: int = Field(3, ge=1)
    #: gradient clipping norm; 0 = none (the authors' default)
    max_grad_norm: float = Field(0.0, ge=0)
    #: DDIM steps of the partial trajectory (the authors' ``max_denoising_steps``)
    max_denoising_steps: int = Field(30, ge=2)
    #: CFG of the partial trajectory (hard-coded 3 in ``train_spm.py``)
    start_guidance: float = Field(3.0, ge=0)
    #: g of the erasing target (the prompt file's ``guidance_scale``)
    negative_guidance: float = Field(1.0, ge=0)
    #: the ``erase_with_la`` action; false = ``erase`` (no anchoring)
    latent_anchoring: bool = True
    la_strength: float = Field(1000.0, ge=0)
    sampling_batch_size: int = Field(4, ge=1)
    #: which predictions the anchoring loss compares: ``released`` = what ``train_spm.py`` computes
    #: (the second half of the interleaved [∅, a₁, ∅, a₂, …] batch: for 4 anchors ∅, a₃, ∅, a₄),
    #: ``all`` = every sampled anchor
    anchor_terms: Literal["released", "all"] = "released"
    #: weight each prompt's adapter by its similarity to the erased prompts (false: weight 1)
    facilitated_transport: bool = True
    matching_metric: Literal["clipcos_tokenuni", "clipcos", "tokenuni"] = "clipcos_tokenuni"


class SPM(Technique):
    description = ("SPM: a rank-1 adapter on the UNet's transformer layers trained with latent anchoring; "
                   "facilitated transport weights it per prompt.")
    paper = "Lyu et al., CVPR 2024 (One-dimensional Adapter to Rule Them All)"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = SPMParams

    def load_or_apply(self, pipe, ctx: RunContext):
        install_adapters(pipe.unet, self.params.rank, self.params.alpha, ctx.seed)
        out, cached = super().load_or_apply(pipe, ctx)
        return self.finish(out, ctx), cached

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        unet = pipe.unet
        install_adapters(unet, p.rank, p.alpha, ctx.seed)
        train(pipe, ctx, p)
        return self.finish(pipe, ctx)

    def finish(self, pipe, ctx: RunContext):
        """The pipeline that generates with the membrane: facilitated transport or weight 1."""
        if isinstance(pipe, Guidance):
            return pipe
        set_multiplier(pipe.unet, None)
        if not self.params.facilitated_transport:
            return pipe
        words = T.concept_words(ctx, self.params.prompts)
        return guided(TransportPipeline, pipe, spm_erased=tuple(words), spm_metric=self.params.matching_metric)


# -- the adapter ------------------------------------------------------------------------------

@functools.cache
def _adapter_class() -> type:
    import torch

    class SPMAdapter(torch.nn.Module):
        """``x ↦ (α / r) · up(down(x))`` for a Linear or Conv2d ``base`` (down: the base's kernel
        shape, Kaiming-uniform; up: 1×1, zeros — the authors' init)."""

        def __init__(self, base: torch.nn.Module, rank: int, alpha: float, generator: torch.Generator) -> None:
            super().__init__()
            nn = torch.nn
            if isinstance(base, nn.Conv2d):
                r = min(rank, base.in_channels, base.out_channels)
                self.down = nn.Conv2d(base.in_channels, r, base.kernel_size, base.stride, base.padding, bias=False)
                self.up = nn.Conv2d(r, base.out_channels, 1, 1, bias=False)
            else:
                r = rank
                self.down = nn.Linear(base.in_features, r, bias=False)
                self.up = nn.Linear(r, base.out_features, bias=False)
            with torch.no_grad():  # kaiming_uniform_(a=√5) from our generator: bound = 1/√fan_in
                fan_in = self.down.weight[0].numel()
                bound = math.sqrt(6.0 / ((1 + 5) * fan_in))
                self.down.weight.copy_(torch.rand(self.down.weight.shape, generator=generator) * 2 * bound - bound)
                self.up.weight.zero_()
            self.scale = alpha / r
            self.to(base.weight.device, base.weight.dtype)
            #: None = weight 1; a float; or a per-sample tensor [B]
            self.multiplier = None

        def forward(self, x):
            return self.up(self.down(x)) * self.scale

    return SPMAdapter


def _hook(module, inputs, output):
    adapter = module.spm
    m = adapter.multiplier
    if m is None:
        return output + adapter(inputs[0])
    if not hasattr(m, "shape"):
        return output if m == 0 else output + m * adapter(inputs[0])
    if m.shape[0] != output.shape[0]:
        raise RuntimeError(f"SPM: {m.shape[0]} transport weights for a batch of {output.shape[0]}")
    return output + m.to(output.dtype).view(-1, *([1] * (output.ndim - 1))) * adapter(inputs[0])


def target_modules(unet) -> list[tuple[str, torch.nn.Module]]:
    """Every Linear / Conv2d inside the UNet's ``Transformer2DModel`` blocks (the authors'
    ``UNET_TARGET_REPLACE_MODULE_TRANSFORMER``), in module order."""
    import torch

    out = []
    for name, block in unet.named_modules():
        if type(block).__name__ == "Transformer2DModel":
            for child, mod in block.named_modules():
                if type(mod) in (torch.nn.Linear, torch.nn.Conv2d):
                    out.append((f"{name}.{child}", mod))
    return out


def install_adapters(unet, rank: int, alpha: float, seed: int) -> list:
    """Attach a zero-effect adapter (``<layer>.spm``) and its forward hook to every target layer,
    seeded from ``seed``; idempotent."""
    import torch

    cls = _adapter_class()
    mods = target_modules(unet)
    if not mods:
        raise ValueError("SPM: the UNet has no transformer blocks with Linear/Conv2d layers")
    if all(isinstance(getattr(m, "spm", None), cls) for _, m in mods):
        return [m.spm for _, m in mods]
    gen = torch.Generator().manual_seed(seed)
    for _, mod in mods:
        mod.add_module("spm", cls(mod, rank, alpha, gen))
        mod.register_forward_hook(_hook)
    return [m.spm for _, m in mods]


def adapters(unet) -> list:
    cls = _adapter_class()
    return [m for m in unet.modules() if isinstance(m, cls)]


def set_multiplier(unet, value) -> None:
    for a in adapters(unet):
        a.multiplier = value


# -- training ---------------------------------------------------------------------------------

def sample_anchors(target: torch.Tensor, n: int, gen: torch.Generator, rng: random.Random) -> list[torch.Tensor]:
    """``n`` anchor embeddings shaped like ``target`` ``[1, 77, d]``: Gaussian directions, each
    accepted with probability ``1 − cos(target, direction)``, scaled by ``U[0.8, 1.2] · ‖target‖``."""
    import torch

    flat, norm = target.flatten(), target.flatten().norm()
    out = []
    while len(out) < n:
        while True:
            d = torch.randn(target.shape, generator=gen).to(target.device, target.dtype)
            d = d / d.flatten().norm()
            sim = torch.nn.functional.cosine_similarity(flat, d.flatten(), dim=0)
            if rng.random() < 1 - float(sim):
                break
        out.append((rng.random() * 0.4 + 0.8) * d * norm)
    return out


def anchor_batch(anchors: Sequence[torch.Tensor], null: torch.Tensor, terms: str) -> torch.Tensor:
    """The embeddings whose predictions the anchoring loss compares. ``released``: the authors
    build ``[∅, a₁, ∅, a₂, …]`` and their CFG helper keeps its second half (guidance 1 returns the
    "conditional" half); ``all``: the anchors themselves."""
    import torch

    if terms == "all":
        return torch.cat(list(anchors))
    inter = [e for a in anchors for e in (null, a)]
    return torch.cat(inter[len(anchors):])


def train_scheduler(pipe, steps: int):
    """The authors' DDIM: the model's betas, no sample clipping, ``steps_offset`` 0."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config, clip_sample=False, steps_offset=0)
    sched.set_timesteps(steps, device=pipe.unet.device)
    return sched


def query_timestep(k: int, steps: int, num_train_timesteps: int = 1000) -> int:
    """The 1000-step timestep the authors query after ``k`` of ``steps`` DDIM steps:
    ``timesteps_1000[⌊1000 k / steps⌋]`` with ``timesteps_1000 = 999 … 0``."""
    return num_train_timesteps - 1 - int(k * num_train_timesteps / steps)


def spm_loss(unet, x, t, cond, null, p: SPMParams, gen, rng, amp) -> tuple[torch.Tensor, dict[str, float]]:
    """Erasing loss (+ ``la_strength`` × anchoring loss) at latent ``x``, timestep ``t``."""
    import torch
    from torch.nn.functional import mse_loss

    from ..models.sampling import predict

    with torch.no_grad():
        set_multiplier(unet, 0.0)
        e = predict(unet, torch.cat([x, x]), t, torch.cat([cond, null]), amp.autocast)
        e_pos, e_neu = e.chunk(2)
    set_multiplier(unet, None)
    e_tgt = predict(unet, x, t, cond, amp.autocast)
    erase = mse_loss(e_tgt, e_neu - p.negative_guidance * (e_pos - e_neu))
    parts = {"erase": erase.item()}
    loss = erase
    if p.latent_anchoring:
        emb = anchor_batch(sample_anchors(cond, p.sampling_batch_size, gen, rng), null, p.anchor_terms)
        xs = x.expand(emb.shape[0], -1, -1, -1)
        adapted = predict(unet, xs, t, emb, amp.autocast)
        with torch.no_grad():
            set_multiplier(unet, 0.0)
            original = predict(unet, xs, t, emb, amp.autocast)
        set_multiplier(unet, None)
        anchor = mse_loss(adapted, original)
        parts["anchor"] = anchor.item()
        loss = erase + p.la_strength * anchor
    return loss, parts


def train(pipe, ctx: RunContext, p: SPMParams) -> None:
    import torch
    from diffusers.optimization import get_scheduler

    from ..models.sampling import ddim_sample_until

    gen = T.seed_everything(ctx.seed)
    rng = random.Random(ctx.seed)
    unet = pipe.unet
    words = T.concept_words(ctx, p.prompts)
    pipe.text_encoder.requires_grad_(False)
    unet.requires_grad_(False)
    params = [q for a in adapters(unet) for q in a.parameters()]
    for q in params:
        q.requires_grad_(True)
    unet.eval()  # the authors keep the UNet in eval mode while the adapter trains
    amp = T.setup_execution(pipe, p)
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    lr_sched = get_scheduler(p.lr_scheduler, opt, num_warmup_steps=p.lr_warmup_steps,
                             num_training_steps=p.iterations, num_cycles=p.lr_num_cycles)
    emb = dict(zip(words, T.encode(pipe, words), strict=True))
    null = T.encode(pipe, [""])
    sched = train_scheduler(pipe, p.max_denoising_steps)
    shape = (1, *T.latent_shape(pipe, ctx.height, ctx.width))
    n_train = sched.config.num_train_timesteps
    try:
        with progress_bar("SPM", p.iterations) as advance:
            for _ in range(p.iterations):
                cond = emb[rng.choice(words)][None]
                k = rng.randrange(1, p.max_denoising_steps)
                start = T.randn(shape, gen, unet.device)
                set_multiplier(unet, None)
                x = ddim_sample_until(unet, sched, cond, null, p.start_guidance, start, k, amp.autocast)
                t = query_timestep(k, p.max_denoising_steps, n_train)
                loss, parts = spm_loss(unet, x, t, cond, null, p, gen, rng, amp)
                opt.zero_grad(set_to_none=True)
                amp.backward(loss)
                amp.step(opt, params, p.max_grad_norm or None)
                lr_sched.step()
                advance(1, loss=f"{loss.item():.5f}")
    finally:
        set_multiplier(unet, None)
        unet.eval()
        unet.requires_grad_(False)


# -- facilitated transport --------------------------------------------------------------------

def special_token_ids(tokenizer) -> set[int]:
    values = [v for v in tokenizer.special_tokens_map.values() if isinstance(v, str)]
    return set(tokenizer.convert_tokens_to_ids(values))


def transport_weights(prompt_emb: torch.Tensor, prompt_ids: torch.Tensor, erased_emb: torch.Tensor,
                      erased_ids: torch.Tensor, special: set[int], metric: str) -> torch.Tensor:
    """γ per prompt ``[B]``: the maximum over erased prompts of the chosen matching scores —
    ``clipcos`` (cosine of the flattened text-encoder outputs) and ``tokenuni`` (share of the
    erased prompt's non-special tokens present in the prompt)."""
    import torch

    scores = []
    if "clipcos" in metric:
        a = prompt_emb.flatten(1).float()
        b = erased_emb.flatten(1).float().to(a.device)
        scores.append(torch.nn.functional.cosine_similarity(a[:, None, :], b[None, :, :], dim=-1))
    if "tokenuni" in metric:
        erased = [set(row.tolist()) - special for row in erased_ids]
        rows = []
        for row in prompt_ids:
            have = set(row.tolist()) - special
            rows.append([len(have & e) / len(e) if e else 0.0 for e in erased])
        scores.append(torch.tensor(rows, dtype=torch.float32, device=scores[0].device if scores else None))
    return torch.stack(scores).amax(dim=0).amax(dim=1)


class TransportPipeline(Guidance):
    """Generation through the membrane with facilitated transport: each sample's adapter weight
    is γ² (both adapter factors scaled by γ, as ``infer_spm.py`` does)."""

    spm_erased: tuple[str, ...] = ()
    spm_metric: str = "clipcos_tokenuni"

    def setup_guidance(self, prompts, negative_prompts, cond, uncond, guidance_scale):
        import torch

        from ..models.text import token_ids

        erased = list(self.spm_erased)
        with torch.no_grad():
            erased_emb = self.embed_texts(erased)
        gamma = transport_weights(cond, token_ids(self, prompts), erased_emb, token_ids(self, erased),
                                  special_token_ids(self.tokenizer), self.spm_metric)
        return {"weight": (gamma ** 2).to(cond.device)}

    def guided_noise(self, i, t, latents, cond, uncond, guidance_scale, state):
        import torch

        set_multiplier(self.unet, torch.cat([state["weight"], state["weight"]]))
        try:
            return super().guided_noise(i, t, latents, cond, uncond, guidance_scale, state)
        finally:
            set_multiplier(self.unet, None)
