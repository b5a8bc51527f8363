"""UCE — Unified Concept Editing (Gandikota, Orgad, Belinkov, Materzyńska & Bau, WACV 2024,
"Unified Concept Editing in Diffusion Models", arXiv:2308.14761; code:
rohitgandikota/unified-concept-editing, the paper-era ``train-scripts/train-erase.py``).

A closed-form edit of every cross-attention key and value projection ``W`` (``attn2.to_k``,
``attn2.to_v``). For erased text-embedding columns ``c_i`` with targets ``v_i`` and preserved
columns ``c_j``, UCE solves

    min_W'  s_e Σ_i ||W' c_i - v_i||² + s_p Σ_j ||W' c_j - W c_j||² + λ ||W' - W||_F²

whose solution is

    W' = (λ W + s_e Σ v_i c_iᵀ + s_p Σ W c_j c_jᵀ) (λ I + s_e Σ c_i c_iᵀ + s_p Σ c_j c_jᵀ)⁻¹.

As in the authors' erase script, the erased columns are the token embeddings from the erased
text's last word token to the end of the 77-token context (word, EOS, padding), aligned with the
guide text's tokens from its last word on; ``technique: replace`` maps them to the guide's
outputs ``v_i = W c_guide``, ``technique: tensor`` to the guide's outputs minus their projection
on the erased outputs, with one direction per (erased text, guide) pair. The preserved texts
are the empty prompt (always, as in the script: it keeps the unconditional branch of
classifier-free guidance in place) plus the preserve concepts, with all their 77 columns.
Prompt templates (the script's ``add_prompts``) expand the erased texts only; each expansion
maps to the same guide. Defaults are the script's: λ = 0.5, erase scale 1, preserve scale
``max(0.1, 1/#preserved texts)``, guide " " (the unconditional embedding), keys and values both
edited.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field, field_validator, model_validator

from .._torch import no_grad
from ..components import Params, Supports, kinds
from ..concepts.catalogue import uce_presets
from ..context import RunContext
from ._closed_form import (
    Normal,
    cross_attention_projections,
    embed,
    last_word_index,
    set_weight,
    solve,
    tokenize,
)
from .base import Technique

if TYPE_CHECKING:
    import torch

__all__ = ["UCE", "aligned_concept_embeddings", "aligned_concept_spans", "cross_attention_projections",
           "embed", "erase_targets"]


class UCEParams(Params):
    #: a preset of assets/concepts/presets/uce.yaml (shipped: nudity, violence, dog)
    preset: str | None = None
    #: concepts to erase; default: the run's concept and its synonyms
    erase: tuple[str, ...] | None = None
    #: what erased concepts are mapped to ("" / " " = the unconditional embedding)
    guide: str = " "
    #: concepts whose outputs must not move (besides the empty prompt); default: concept.retain
    preserve: tuple[str, ...] | None = None
    #: extra prompt templates with ``{}`` for each erased concept (the authors' ``add_prompts``)
    templates: tuple[str, ...] = ()
    technique: Literal["replace", "tensor"] = "replace"
    lamb: float = Field(0.5, ge=0.0)
    erase_scale: float = Field(1.0, ge=0.0)
    #: None = the script's rule max(0.1, 1 / number of preserved texts incl. the empty prompt)
    preserve_scale: float | None = Field(None, ge=0.0)
    with_to_k: bool = True

    @field_validator("preset")
    @classmethod
    def _known_preset(cls, value: str | None) -> str | None:
        if value is not None and value not in uce_presets():
            raise ValueError(f"unknown preset {value!r}; known: {', '.join(uce_presets())}")
        return value

    @model_validator(mode="after")
    def _check(self):
        if self.erase is not None and not [e for e in self.erase if e.strip()]:
            raise ValueError("erase: the list of concepts to erase is empty")
        if any("{}" not in t for t in self.templates):
            raise ValueError("templates: each template needs a '{}' for the concept")
        return self


def auto_preserve_scale(n_texts: int) -> float:
    """The authors' default: ``max(0.1, 1 / n)`` rounded to 3 decimals."""
    return round(max(0.1, 1.0 / max(n_texts, 1)), 3)


class UCE(Technique):
    description = "Unified Concept Editing: closed-form edit of cross-attention K/V projections."
    paper = "Gandikota et al., WACV 2024"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = UCEParams

    def inputs(self, ctx: RunContext) -> dict:
        """The default inputs plus the preset's contents (a data file: editing it misses the cache)."""
        base = super().inputs(ctx)
        return {**base, "preset": uce_presets().get(self.params.preset)} if self.params.preset else base

    # -- texts ---------------------------------------------------------------------------
    def erase_words(self, ctx: RunContext) -> list[str]:
        """The erased concepts, before templates."""
        p = self.params
        preset = uce_presets()[p.preset] if p.preset else {}
        return [e for e in (p.erase or preset.get("erase") or (ctx.concept.name, *ctx.concept.synonyms)) if e.strip()]

    def texts(self, ctx: RunContext) -> tuple[list[str], list[str], list[str]]:
        """(erased texts, their guides, preserved texts incl. the empty prompt)."""
        p = self.params
        preset = uce_presets()[p.preset] if p.preset else {}
        erase = self.erase_words(ctx)
        preserve = list(p.preserve if p.preserve is not None else preset.get("preserve", ctx.concept.retain))
        guide = p.guide if p.guide.strip() else " "
        old = [*erase, *(t.format(w) for w in erase for t in p.templates)]
        return old, [guide] * len(old), ["", *(t for t in preserve if t.strip() and t not in erase)]

    # -- the edit ------------------------------------------------------------------------
    @no_grad
    def apply(self, pipe, ctx: RunContext):
        p = self.params
        old, new, keep = self.texts(ctx)
        s_p = p.preserve_scale if p.preserve_scale is not None else auto_preserve_scale(len(keep))
        c_old, c_new, spans = aligned_concept_spans(pipe, old, new)
        c_keep = embed(pipe, keep).reshape(-1, c_old.shape[-1])
        for proj in cross_attention_projections(pipe.unet, p.with_to_k, "technique 'uce'"):
            w = proj.weight.detach().double()
            normal = Normal(*w.shape, device=w.device)
            normal.add(c_old, erase_targets(w, c_old, c_new, p.technique, spans), p.erase_scale)
            normal.add(c_keep, c_keep.to(w) @ w.T, s_p)
            set_weight(proj, solve(w, normal, p.lamb))
        return pipe


def erase_targets(w: torch.Tensor, c_old: torch.Tensor, c_new: torch.Tensor, technique: str,
                  spans: list[int] | None = None) -> torch.Tensor:
    """Targets ``v_i`` for erased columns: the guide's outputs (``replace``), or (``tensor``) those
    minus their component along the erased outputs, per (erased text, guide) pair.

    ``spans`` gives the number of consecutive columns of each pair (``None``: one pair). For a pair
    with erased outputs ``O = W C_old`` and guide outputs ``V = W C_new`` (both T × out), the
    ``tensor`` target is ``V - <U, V>_F U`` with ``U = O / ||O||_F``: one direction per pair, as in
    the paper's erase script, not one over the whole stack of pairs.
    """
    import torch

    v_new = c_new.to(w) @ w.T
    if technique == "tensor":
        o = c_old.to(w) @ w.T
        parts = []
        for o_k, v_k in zip(o.split(spans or [o.shape[0]]), v_new.split(spans or [o.shape[0]]), strict=True):
            u = o_k / o_k.norm()
            parts.append(v_k - (u * v_k).sum() * u)
        v_new = torch.cat(parts)
    return v_new


def aligned_concept_embeddings(pipe, old: list[str], new: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """Columns [ΣT, d] of the erased texts from their last word on, aligned with the guides'."""
    c_old, c_new, _ = aligned_concept_spans(pipe, old, new)
    return c_old, c_new


def aligned_concept_spans(pipe, old: list[str], new: list[str]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """As :func:`aligned_concept_embeddings`, plus the number of columns of each (old, new) pair."""
    import torch

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
    return torch.cat(cols_old), torch.cat(cols_new), [len(c) for c in cols_old]
