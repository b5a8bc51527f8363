"""MACE — Mass Concept Erasure (Lu, Wang, Li, Liu & Kong, CVPR 2024, "MACE: Mass Concept Erasure
in Diffusion Models", arXiv:2403.06135; code: Shilin-LU/MACE).

Three stages, all on the key/value projections of the UNet's cross-attention blocks:

1. **Closed-form refinement (CFR).** For every erased concept and each of its augmented prompts
   ("a photo of {concept}", ...), the same prompt with the concept replaced by its mapping
   concept is built. The tokens the two prompts share (the common prefix and suffix, then the
   padding) are the *surrounding words*: their original-prompt embeddings are mapped to the
   outputs of the mapping prompt's corresponding tokens, so the words around the concept no
   longer carry its residual information. The concept's own tokens are not in the fit.
   ``W' = (λ W + Σ W c_map cᵀ + s_p² Σ W c_p c_pᵀ)(λ I + Σ c cᵀ + s_p² Σ c_p c_pᵀ)⁻¹`` with
   s_p = ``train_preserve_scale``: squared, as the authors' script applies it (twice; the
   paper's equation has it once, see :func:`refinement_preserve_weight`).
2. **One LoRA per concept** on the refined UNet (rank ``rank`` on every ``attn2.to_k`` /
   ``attn2.to_v``), trained to suppress the cross-attention the concept's tokens (and, with
   ``use_pooler``, the EOS/padding tokens) receive inside the concept's region of images the
   original model generated for the concept: loss = Σ over layers of the Frobenius norm of
   those attention probabilities; timesteps from the paper's importance sampling (a window
   around t = 200…400) or uniform.
3. **Closed-form fusion.** Each LoRA-fused projection ``W + ΔW_i`` gives targets ``(W + ΔW_i) c``
   for all 77 token embeddings of concept i's prompts; one ridge solve from the refined weights
   fits every concept's targets at once (plus an optional preserve term), so the LoRAs do not
   interfere.

Defaults are the authors' object-erasure config (``configs/object/erase_ship.yaml``): λ = 1e3,
preserve scales 0, 30 augmented prompts, rank 1, lr 1e-5, 50 steps, batch 1, importance sampling,
pooler tokens included, 8 training images per concept made by the original model from "a photo of
the {concept}" (30 steps, guidance 7.5). Their explicit-content config instead uses λ = 0,
preserve scales 7e-7 with a cached MS-COCO prior and 120 steps — set those through the params.

Deviation, stated: the authors segment the concept in each training image with Grounded-SAM
(GroundingDINO + SAM-HQ) to restrict the attention loss to the concept's region. Those models are
not available offline here, so ``mask: attention`` takes the region from the original model's own
cross-attention to the concept tokens while it generates the image (mean over layers, heads and
steps, above its spatial mean); ``mask: none`` uses every pixel, which is what the authors do for
artistic styles. The training latents are the generated latents themselves (the authors
VAE-encode the decoded images). The preserve prior is built from ``preserve`` prompts (default:
the concept's retain concepts through the templates), not from a cached MS-COCO set.
"""

from __future__ import annotations

import functools
import random
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field, model_validator

from .._torch import no_grad
from ..components import Params, Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ._attention import CrossAttnProcessor as _CrossAttnProcessor
from ._attention import set_cross_processors as _set_cross_processors
from ._closed_form import Normal, cross_attention_projections, embed, set_weight, solve, tokenize
from .base import Technique
from .ssd import training_scheduler

if TYPE_CHECKING:
    import torch

#: Prompt augmentations in the spirit of the authors' lists (ours; ``{}`` = the concept).
OBJECT_TEMPLATES: tuple[str, ...] = (
    "a photo of {}", "{} in a photo", "a picture of {}", "an image of {}", "a snapshot of {}",
    "a drawing of {}", "a painting of {}", "a sketch of {}", "an illustration of {}",
    "a close-up photo of {}", "a rendering of {}", "a black and white photo of {}",
    "a detailed photo of {}", "a cropped photo of {}", "a bright photo of {}", "a dark photo of {}",
    "a blurry photo of {}", "a clear photo of {}", "a small {}", "a large {}", "{} on a plain background",
    "a digital image of {}", "an old photo of {}", "a high resolution photo of {}", "a cartoon of {}",
    "a graphic of {}", "a depiction of {}", "{} captured in an image", "a simple drawing of {}",
    "a colourful picture of {}", "{}",
)
STYLE_TEMPLATES: tuple[str, ...] = (
    "an artwork by {}", "a painting by {}", "art in the style of {}", "a drawing by {}",
    "a sketch by {}", "an illustration by {}", "a picture in the style of {}", "a portrait by {}",
    "a landscape by {}", "a famous work by {}", "an image in the style of {}", "a digital artwork by {}",
    "a recent work by {}", "an early work by {}", "a masterpiece by {}", "the style of {}",
    "a still life by {}", "a print by {}", "an abstract piece by {}", "a poster in the style of {}",
    "a mural by {}", "a study by {}", "a work inspired by {}", "a reproduction of a work by {}",
    "a colourful painting by {}", "a city scene by {}", "a portrait in the style of {}", "a scene by {}",
    "a drawing in the style of {}", "an oil painting by {}", "{}",
)


class MACEParams(Params):
    #: concepts to erase, one LoRA each; default: the run's concept and its synonyms
    erase: tuple[str, ...] | None = None
    #: what each erased concept's surrounding words are mapped to: one for all or one per concept
    mapping: tuple[str, ...] = (" ",)
    #: prompt templates with ``{}``; None = ours for the concept's kind (object/attribute vs style)
    templates: tuple[str, ...] | None = None
    #: how many templates are sampled per concept (the authors' ``aug_length``)
    aug_length: int = Field(30, ge=1)
    #: preserved prompts for the prior term; default: concept.retain through the templates
    preserve: tuple[str, ...] | None = None
    lamb: float = Field(1000.0, ge=0.0)
    #: s_p of the refinement's prior term, applied squared (as the authors' script does)
    train_preserve_scale: float = Field(0.0, ge=0.0)
    fuse_preserve_scale: float = Field(0.0, ge=0.0)
    use_pooler: bool = True
    rank: int = Field(1, ge=1)
    learning_rate: float = Field(1e-5, gt=0.0)
    max_train_steps: int = Field(50, ge=0)
    importance_sampling: bool = True
    num_images: int = Field(8, ge=1)
    data_prompt: str | None = None
    data_steps: int = Field(30, ge=1)
    data_guidance: float = Field(7.5, ge=0.0)
    #: region of the attention loss: auto = none for styles, attention otherwise
    mask: Literal["auto", "attention", "none"] = "auto"
    max_grad_norm: float = Field(1.0, gt=0.0)
    with_to_k: bool = True

    @model_validator(mode="after")
    def _check(self):
        if self.erase is not None and not [e for e in self.erase if e.strip()]:
            raise ValueError("erase: the list of concepts to erase is empty")
        if not self.mapping:
            raise ValueError("mapping: give one mapping concept, or one per erased concept")
        if self.erase is not None and len(self.mapping) not in (1, len(self.erase)):
            raise ValueError("mapping: give one mapping concept, or one per erased concept")
        if self.templates is not None and (not self.templates or any("{}" not in t for t in self.templates)):
            raise ValueError("templates: give at least one template, each with a '{}' for the concept")
        if self.data_prompt is not None and "{}" not in self.data_prompt:
            raise ValueError("data_prompt: needs a '{}' for the concept")
        return self


class MACE(Technique):
    description = "MACE: closed-form cross-attention refinement, one LoRA per concept, closed-form LoRA fusion."
    paper = "Lu et al., CVPR 2024"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = MACEParams

    def __init__(self, params) -> None:
        super().__init__(params)
        self.losses: dict[str, list[float]] = {}

    # -- texts ----------------------------------------------------------------------------
    def concepts(self, ctx: RunContext) -> list[tuple[str, str]]:
        p = self.params
        erase = [e for e in (p.erase or (ctx.concept.name, *ctx.concept.synonyms)) if e.strip()]
        if len(p.mapping) not in (1, len(erase)):
            raise UserError("technique 'mace': mapping: give one mapping concept, or one per erased concept")
        mapping = list(p.mapping) * len(erase) if len(p.mapping) == 1 else list(p.mapping)
        return list(zip(erase, mapping, strict=True))

    def templates(self, ctx: RunContext) -> list[str]:
        p = self.params
        base = p.templates or (STYLE_TEMPLATES if ctx.concept.kind == "style" else OBJECT_TEMPLATES)
        rng = random.Random(ctx.seed)
        return rng.sample(list(base), min(p.aug_length, len(base)))

    def data_prompt(self, ctx: RunContext) -> str:
        if self.params.data_prompt:
            return self.params.data_prompt
        return "a photo in the style of {}" if ctx.concept.kind == "style" else "a photo of the {}"

    # -- the edit -------------------------------------------------------------------------
    def apply(self, pipe, ctx: RunContext):
        import torch

        p = self.params
        who = "technique 'mace'"
        pairs = self.concepts(ctx)
        templates = self.templates(ctx)
        mask_mode = p.mask if p.mask != "auto" else ("none" if ctx.concept.kind == "style" else "attention")
        projs = cross_attention_projections(pipe.unet, p.with_to_k, who)
        original = [q.weight.detach().double().clone() for q in projs]

        # training data from the original model: latents (+ attention masks) per concept
        data = {c: concept_images(pipe, ctx, self.data_prompt(ctx).format(c), c, p, ctx.seed + i, mask_mode)
                for i, (c, _) in enumerate(pairs)}

        # prior (preserve) term, with the original weights
        preserve = list(p.preserve) if p.preserve is not None else [
            t.format(r) for r in ctx.concept.retain for t in templates]
        c_pres = embed(pipe, preserve).reshape(-1, original[0].shape[1]) if preserve else None

        # stage 1: closed-form refinement
        with torch.no_grad():
            ctxs, tgts = cfr_columns(pipe, pairs, templates)
            for q, w in zip(projs, original, strict=True):
                normal = Normal(*w.shape, device=w.device)
                normal.add(ctxs, tgts.to(w) @ w.T)
                if c_pres is not None:
                    normal.add(c_pres, c_pres.to(w) @ w.T, refinement_preserve_weight(p.train_preserve_scale))
                set_weight(q, solve(w, normal, p.lamb))
        refined = [q.weight.detach().double().clone() for q in projs]

        # stage 2 + 3: one LoRA per concept; its fused outputs are the fusion targets
        fusion = [Normal(*w.shape, device=w.device) for w in refined]
        for concept, _ in pairs:
            prompts = [t.format(concept) for t in templates]
            deltas = train_lora(pipe, ctx, concept, prompts, data[concept], p, self.losses.setdefault(concept, []))
            with torch.no_grad():
                c_all = embed(pipe, prompts).reshape(-1, refined[0].shape[1]).double()
                for normal, w, dw in zip(fusion, refined, deltas, strict=True):
                    normal.add(c_all, c_all @ (w + dw).T)
        with torch.no_grad():
            for q, w, w0, normal in zip(projs, refined, original, fusion, strict=True):
                if c_pres is not None:
                    normal.add(c_pres, c_pres.to(w0) @ w0.T, p.fuse_preserve_scale)
                set_weight(q, solve(w, normal, p.lamb))
        return pipe


# -- stage 1 ------------------------------------------------------------------------------


def refinement_preserve_weight(train_preserve_scale: float) -> float:
    """Weight of the prior term in the closed-form refinement: ``train_preserve_scale`` squared.

    The authors' training script scales the cached prior by ``train_preserve_scale`` when it
    merges it with the refinement sums and again inside the refinement solve, so every published
    config (all within its ``max_memory``) ran the refinement with s_p²; the paper's equation has
    one factor. Squared here so that the authors' config values reproduce their edit.
    """
    return train_preserve_scale**2



def matching_indices(old: list[int], new: list[int], length: int = 77) -> tuple[list[int], list[int]]:
    """Positions of the tokens two prompts share (common prefix, common suffix), then the
    padding after them, aligned one to one between ``old`` and ``new`` (token ids with BOS/EOS)."""
    start = 0
    while start < min(len(old), len(new)) and old[start] == new[start]:
        start += 1
    end_o, end_n = len(old) - 1, len(new) - 1
    while end_o >= start and end_n >= start and old[end_o] == new[end_n]:
        end_o -= 1
        end_n -= 1
    io = list(range(start)) + list(range(end_o + 1, len(old)))
    jn = list(range(start)) + list(range(end_n + 1, len(new)))
    shift = io[-1] - jn[-1]
    if shift >= 0:
        io += list(range(io[-1] + 1, length))
        jn += list(range(jn[-1] + 1, length - shift))
    else:
        jn += list(range(jn[-1] + 1, length))
        io += list(range(io[-1] + 1, length + shift))
    return io, jn


@no_grad
def cfr_columns(pipe, pairs: list[tuple[str, str]], templates: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Surrounding-word columns of every erased prompt and the mapping prompt's columns they map to."""
    import torch

    olds = [t.format(c) for c, _ in pairs for t in templates]
    news = [t.format(m) for _, m in pairs for t in templates]
    e_old, e_new = embed(pipe, olds), embed(pipe, news)
    length = e_old.shape[1]
    ctxs, tgts = [], []
    for k, (o, n) in enumerate(zip(olds, news, strict=True)):
        io, jn = matching_indices(pipe.tokenizer(o).input_ids, pipe.tokenizer(n).input_ids, length)
        ctxs.append(e_old[k, io])
        tgts.append(e_new[k, jn])
    return torch.cat(ctxs), torch.cat(tgts)


# -- stage 2 ------------------------------------------------------------------------------


@functools.cache
def _lora_class() -> type:
    """The LoRA module class (a torch module: built on first use, so the module imports without torch)."""
    import torch

    class Lora(torch.nn.Module):
        """``x -> up(down(x))``; down ~ N(0, 1/rank), up = 0 (diffusers' LoRALinearLayer init)."""

        def __init__(self, d_in: int, d_out: int, rank: int, generator: torch.Generator) -> None:
            super().__init__()
            self.down = torch.nn.Parameter(torch.randn(rank, d_in, generator=generator) / rank)
            self.up = torch.nn.Parameter(torch.zeros(d_out, rank))

        def forward(self, x):
            return (x @ self.down.T.to(x.dtype)) @ self.up.T.to(x.dtype)

        def delta(self) -> torch.Tensor:
            return (self.up @ self.down).detach().double()

    return Lora


def concept_positions(pipe, prompt: str, concept: str, use_pooler: bool) -> torch.Tensor:
    """Boolean [77]: the concept's tokens in the prompt, plus EOS/padding with ``use_pooler``."""
    import torch

    ids = tokenize(pipe, [prompt]).input_ids[0].tolist()
    cids = pipe.tokenizer(concept, add_special_tokens=False).input_ids
    pos = torch.zeros(len(ids), dtype=torch.bool)
    for i in range(len(ids) - len(cids) + 1):
        if cids and ids[i : i + len(cids)] == cids:
            pos[i : i + len(cids)] = True
    if use_pooler:
        pos |= torch.tensor(ids) == pipe.tokenizer.eos_token_id
    return pos


def concept_images(pipe, ctx: RunContext, prompt: str, concept: str, p: MACEParams, seed: int, mask_mode: str):
    """``num_images`` latents of ``prompt`` from the current (original) model, and per-image masks
    [N, h, w] of the concept's region (all ones for ``mask: none``)."""
    import torch
    import torch.nn.functional as F

    pos = concept_positions(pipe, prompt, concept, use_pooler=False)
    maps: dict[int, torch.Tensor] = {}

    def record(probs, batch):
        if not pos.any():
            return
        heads = probs.shape[0] // batch
        cond = probs.reshape(batch, heads, *probs.shape[1:])[batch // 2 :]  # CFG: conditional half
        m = cond[..., pos].sum(-1).mean(1).float()  # [n, pixels]
        side = int(round(m.shape[-1] ** 0.5))
        m = F.interpolate(m.reshape(-1, 1, side, side), size=latent_hw, mode="bilinear").squeeze(1)
        maps[0] = maps.get(0, 0) + m / m.amax(dim=(-1, -2), keepdim=True).clamp_min(1e-12)

    from .ssd import generate_latents

    scale = 2 ** (len(pipe.vae.config.block_out_channels) - 1)
    latent_hw = (ctx.height // scale, ctx.width // scale)
    before = None
    if mask_mode == "attention":
        before = _set_cross_processors(pipe.unet, lambda name: _CrossAttnProcessor(recorder=record))
    try:
        latents = generate_latents(pipe, ctx, [prompt], p.num_images, seed, p.data_steps, p.data_guidance)
    finally:
        if before is not None:
            pipe.unet.set_attn_processor(before)
    if mask_mode == "attention" and 0 in maps:
        m = maps[0]
        masks = m > m.mean(dim=(-1, -2), keepdim=True)
    else:
        masks = torch.ones(latents.shape[0], *latent_hw, dtype=torch.bool)
    return latents, masks


def importance_weights(n: int, temperature: float = 0.05) -> np.ndarray:
    """The authors' relation-focal importance sampling density over timesteps (window ~200..400)."""
    t = np.arange(n, dtype=np.float64)
    f = 1 / (1 + np.exp(-temperature * (t - 200))) - 1 / (1 + np.exp(-temperature * (t - 400)))
    return f / f.sum()


def train_lora(pipe, ctx: RunContext, concept: str, prompts: list[str], data, p: MACEParams,
               log: list[float]) -> list[torch.Tensor]:
    """Train one rank-``p.rank`` LoRA on the K/V of every attn2; return its ΔW per projection
    (in :func:`cross_attention_projections` order)."""
    import torch
    import torch.nn.functional as F

    unet = pipe.unet
    latents, masks = data
    gen = torch.Generator("cpu").manual_seed(ctx.seed + 7)
    rng = np.random.default_rng(ctx.seed + 7)
    names = [n for n, _ in unet.named_modules() if n.endswith("attn2")]
    loras = {}
    for n in names:
        attn = unet.get_submodule(n)
        loras[n] = (_lora_class()(attn.to_k.in_features, attn.to_k.out_features, p.rank, gen),
                    _lora_class()(attn.to_v.in_features, attn.to_v.out_features, p.rank, gen))
    params = [t for pair in loras.values() for lora in pair for t in lora.parameters()]
    for lora in (lo for pair in loras.values() for lo in pair):
        lora.to(unet.device)
    opt = torch.optim.AdamW(params, lr=p.learning_rate, betas=(0.9, 0.999), weight_decay=0.01, eps=1e-8)
    sched = training_scheduler(pipe)
    n_t = sched.config.num_train_timesteps
    probs_t = importance_weights(n_t) if p.importance_sampling else None
    recorded: list[torch.Tensor] = []
    state = {}

    def record(probs, batch):
        region = state["mask"]
        side = int(round(probs.shape[1] ** 0.5))
        m = F.interpolate(region[None, None].float(), size=(side, side), mode="nearest").flatten() > 0.5
        recorded.append(probs[:, m][:, :, state["pos"]])

    names_key = {n + ".processor": n for n in names}
    before = _set_cross_processors(unet, lambda key: _CrossAttnProcessor(*loras[names_key[key]], recorder=record))
    flags = {n: q.requires_grad for n, q in unet.named_parameters()}
    unet.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    ids = tokenize(pipe, prompts).input_ids.to(unet.device)
    try:
        with torch.no_grad():
            conds = pipe.text_encoder(ids)[0]
        positions = [concept_positions(pipe, pr, concept, p.use_pooler) for pr in prompts]
        with torch.enable_grad():
            for _ in range(p.max_train_steps):
                i = int(rng.integers(len(latents)))
                j = int(rng.integers(len(prompts)))
                state["mask"], state["pos"] = masks[i].to(unet.device), positions[j].to(unet.device)
                x0 = latents[i : i + 1].to(unet.device, unet.dtype)
                noise = torch.randn(x0.shape, generator=gen).to(x0)
                t = int(rng.choice(n_t, p=probs_t)) if probs_t is not None else int(rng.integers(n_t))
                t = torch.tensor([t], device=unet.device)
                recorded.clear()
                unet(sched.add_noise(x0, noise, t), t, encoder_hidden_states=conds[j : j + 1])  # fills `recorded`
                loss = sum(a.float().norm() for a in recorded)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, p.max_grad_norm)
                opt.step()
                log.append(float(loss.detach()))
                recorded.clear()
    finally:
        unet.set_attn_processor(before)
        for n, q in unet.named_parameters():
            q.requires_grad_(flags[n])
    deltas_v = [loras[n][1].delta() for n in names]
    deltas_k = [loras[n][0].delta() for n in names] if p.with_to_k else []
    return deltas_v + deltas_k


__all__ = ["MACE", "MACEParams", "matching_indices", "refinement_preserve_weight"]
