"""UCE — Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska & Bau, WACV 2024,
"Unified Concept Editing in Diffusion Models", arXiv:2308.14761).

A closed-form edit of every cross-attention key and value projection ``W`` (``attn2.to_k``,
``attn2.to_v``). For erased text embeddings ``c_i`` with targets ``v_i`` and preserved
embeddings ``c_j``, UCE solves

    min_W'  sum_i ||W' c_i - v_i||^2 · s_e  +  sum_j ||W' c_j - W c_j||^2 · s_p  +  λ ||W' - W||_F^2

whose solution is

    W' = (λ W + s_e Σ v_i c_iᵀ + s_p Σ W c_j c_jᵀ) (λ I + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹.

As in the authors' code, the erased columns are the token embeddings from the concept's last
word token to the end of the 77-token context (word, EOS, padding), aligned with the guide
text's tokens from its last word on; ``technique: replace`` maps them to the guide's outputs
``v_i = W c_guide``, ``technique: tensor`` to the guide's outputs minus their projection on the
erased outputs. Preserved texts keep all their token columns. Defaults are the authors' erase
script's: λ = 0.5, erase scale 1, preserve scale 0.1, guide " " (the unconditional), keys and
values both edited.
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field, model_validator

from ..components import Params, Supports, kinds
from ..context import RunContext
from ..errors import UserError
from .base import Technique

#: Ready concept sets for Stable Diffusion, after the presets the peer ships (nudity, violence,
#: dog) and the UCE paper's moderation list.
PRESETS: dict[str, dict] = {
    "nudity": {"erase": ("nudity", "naked", "nude", "sexual", "nsfw"), "guide": " "},
    "violence": {"erase": ("violence", "blood", "gore", "murder", "weapons", "shooting"), "guide": " "},
    "dog": {"erase": ("dog",), "guide": " ", "preserve": ("cat", "horse", "wolf", "car", "person")},
}


class UCE(Technique):
    description = "Unified Concept Editing: closed-form edit of cross-attention K/V projections."
    paper = "Gandikota et al., WACV 2024"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        preset: Literal["nudity", "violence", "dog"] | None = None
        #: concepts to erase; default: the run's concept and its synonyms
        erase: tuple[str, ...] | None = None
        #: what erased concepts are mapped to ("" / " " = the unconditional embedding)
        guide: str = " "
        #: concepts whose outputs must not move; default: the run's concept.retain
        preserve: tuple[str, ...] | None = None
        #: extra prompt templates with ``{}`` for the concept (the authors' ``add_prompts``)
        templates: tuple[str, ...] = ()
        technique: Literal["replace", "tensor"] = "replace"
        lamb: float = Field(0.5, ge=0.0)
        erase_scale: float = Field(1.0, ge=0.0)
        preserve_scale: float = Field(0.1, ge=0.0)
        with_to_k: bool = True

        @model_validator(mode="after")
        def _check(self):
            if self.erase is not None and not [e for e in self.erase if e.strip()]:
                raise ValueError("erase: the list of concepts to erase is empty")
            if any("{}" not in t for t in self.templates):
                raise ValueError("templates: each template needs a '{}' for the concept")
            return self

    # -- texts ---------------------------------------------------------------------------
    def texts(self, ctx: RunContext) -> tuple[list[str], list[str], list[str]]:
        p = self.params
        preset = PRESETS[p.preset] if p.preset else {}
        erase = list(p.erase or preset.get("erase") or (ctx.concept.name, *ctx.concept.synonyms))
        preserve = list(p.preserve if p.preserve is not None else preset.get("preserve", ctx.concept.retain))
        guide = p.guide if p.guide.strip() else " "
        templated = lambda words: [*words, *(t.format(w) for w in words for t in p.templates)]  # noqa: E731
        old = templated(erase)
        return old, [guide] * len(old), templated(preserve)

    # -- the edit ------------------------------------------------------------------------
    @torch.no_grad()
    def apply(self, pipe, ctx: RunContext):
        old, new, keep = self.texts(ctx)
        c_old, c_new = aligned_concept_embeddings(pipe, old, new)
        c_keep = embed(pipe, keep).reshape(-1, c_old.shape[-1]) if keep else None
        for proj in cross_attention_projections(pipe.unet, self.params.with_to_k):
            edit_projection(proj, c_old, c_new, c_keep, self.params)
        return pipe


def cross_attention_projections(unet, with_to_k: bool = True) -> list[torch.nn.Linear]:
    """Value (and key) projections of every cross-attention (``attn2``) block of the UNet."""
    out = []
    for name, module in unet.named_modules():
        if name.endswith("attn2"):
            out.append(module.to_v)
            if with_to_k:
                out.append(module.to_k)
    if not out:
        raise UserError("technique 'uce': the UNet has no cross-attention (attn2) layers to edit")
    return out


def tokenize(pipe, texts: list[str]):
    tok = pipe.tokenizer
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt")


def embed(pipe, texts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states [N, 77, d] as the UNet sees them."""
    ids = tokenize(pipe, texts).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0].float()


def last_word_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last word token: BOS at 0, words 1..n, EOS at n+1."""
    return attention_mask.sum(-1) - 2


def aligned_concept_embeddings(pipe, old: list[str], new: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns [sum_T, d] of the erased texts from their last word on, aligned with the guides'."""
    tok_old, tok_new = tokenize(pipe, old), tokenize(pipe, new)
    e_old, e_new = embed(pipe, old), embed(pipe, new)
    i_old, i_new = last_word_index(tok_old.attention_mask), last_word_index(tok_new.attention_mask)
    length = e_old.shape[1]
    cols_old, cols_new = [], []
    for k in range(len(old)):
        a, b = int(i_old[k]), int(i_new[k])
        span = length - max(a, b)
        cols_old.append(e_old[k, a : a + span])
        cols_new.append(e_new[k, b : b + span])
    return torch.cat(cols_old), torch.cat(cols_new)


def edit_projection(proj: torch.nn.Linear, c_old, c_new, c_keep, p) -> None:
    W = proj.weight.detach().double()
    c_old, c_new = c_old.to(W), c_new.to(W)
    d = W.shape[1]
    v_new = c_new @ W.T  # guide outputs [N, out]
    if p.technique == "tensor":
        o = c_old @ W.T
        u = o / o.norm()
        v_new = v_new - (u * v_new).sum() * u
    mat1 = p.lamb * W + p.erase_scale * v_new.T @ c_old
    mat2 = p.lamb * torch.eye(d, dtype=W.dtype, device=W.device) + p.erase_scale * c_old.T @ c_old
    if c_keep is not None:
        c_keep = c_keep.to(W)
        mat1 = mat1 + p.preserve_scale * (c_keep @ W.T).T @ c_keep
        mat2 = mat2 + p.preserve_scale * c_keep.T @ c_keep
    # W' = mat1 mat2^-1, with mat2 symmetric positive definite (λ > 0) -> solve, not invert
    new_w = torch.linalg.solve(mat2, mat1.T).T
    proj.weight.copy_(new_w.to(proj.weight.dtype))
