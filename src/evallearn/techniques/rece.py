"""RECE — Reliable and Efficient Concept Erasure (Gong, Chen, Wei, Chen & Jiang, ECCV 2024,
"Reliable and Efficient Concept Erasure of Text-to-Image Diffusion Models", arXiv:2407.12383;
code: CharlesGong12/RECE).

RECE starts from a UCE-edited model (stage 1, :mod:`.uce`) and then, for ``epochs`` rounds,

1. derives in closed form, for each erased concept, a new text embedding ``c'`` that makes the
   *edited* cross-attention projections ``W'`` reproduce what the *original* ones ``W`` output
   for the concept — an embedding that regenerates the erased concept despite the edit. With
   the paper's regulariser (the code's ``close_regzero``: a pull of ``c'`` towards 0 with
   weight γ, ``regular_scale``), summed over every edited projection:

       c' = argmin_x Σ_l ||W'_l x - W_l c||² + γ ||x||²  =  (Σ_l W'_lᵀ W'_l + γ I)⁻¹ Σ_l W'_lᵀ W_l c

   applied to each of the concept's 77 token embeddings;
2. erases those embeddings in turn with a UCE step on the current weights: all 77 columns of
   ``c'`` map to ``W' c_guide`` (the guide's 77 columns), the empty prompt and the preserve
   concepts keep their current outputs:

       W'' = (λ W' + s_e Σ W' c_guide c'ᵀ + s_p Σ W' c_p c_pᵀ)(λ I + s_e Σ c' c'ᵀ + s_p Σ c_p c_pᵀ)⁻¹.

   The preserved texts ``c_p`` hold the empty prompt once per erased concept (K concepts: weight
   K·s_p), as the authors' ``train.py`` builds its retain list (one ``' '`` per concept);
   ``rece_empty_prompt: once`` counts it once, as the UCE stage does.

Defaults: stage 1 = :class:`UCE`'s defaults (the authors start from a UCE checkpoint made with
the UCE script's defaults); stage 2 = the RECE README's nudity settings: 3 epochs, γ = 0.1,
λ = 0.1, s_e = 1, s_p = 0.1 (README: styles and hard objects γ = 1e-3 and 1 epoch; I2P concepts
2 epochs). Not reproduced: the authors' scripts keep the epoch whose images score best on a
validation prompt set (NudeNet / Q16 / a classifier); here every epoch is applied and the last
model is returned, since the benchmark itself is the evaluation.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from pydantic import Field

from .._torch import no_grad
from ..context import RunContext
from ._closed_form import Normal, cross_attention_projections, embed, set_weight, solve
from .uce import UCE, UCEParams, erase_targets

if TYPE_CHECKING:
    import torch


class RECEParams(UCEParams):
    #: rounds of (derive regenerating embeddings, erase them)
    epochs: int = Field(3, ge=1)
    #: γ, the regulariser pulling derived embeddings towards 0 (the code's ``regular_scale``)
    regular_scale: float = Field(0.1, ge=0.0)
    #: λ, s_e, s_p of the RECE erase steps (the UCE stage uses ``lamb``/``erase_scale``/``preserve_scale``)
    rece_lamb: float = Field(0.1, ge=0.0)
    rece_erase_scale: float = Field(1.0, ge=0.0)
    rece_preserve_scale: float = Field(0.1, ge=0.0)
    #: how often the empty prompt is preserved in the RECE erase steps: once per erased concept
    #: (the authors' retain list) or once
    rece_empty_prompt: Literal["per_concept", "once"] = "per_concept"


class RECE(UCE):
    description = "RECE: UCE, then iterative closed-form derivation and erasure of regenerating embeddings."
    paper = "Gong et al., ECCV 2024"
    Params = RECEParams

    def __init__(self, params) -> None:
        super().__init__(params)
        #: per epoch, per concept: ||W' c' - W c|| / ||W c|| after derivation (how well c' regenerates)
        self.history: list[list[float]] = []

    @no_grad
    def apply(self, pipe, ctx: RunContext):
        p = self.params
        who = "technique 'rece'"
        original = [proj.weight.detach().double().clone()
                    for proj in cross_attention_projections(pipe.unet, p.with_to_k, who)]
        pipe = super().apply(pipe, ctx)  # stage 1: UCE
        old, new, keep = self.texts(ctx)
        concepts = list(dict.fromkeys(self.erase_words(ctx)))  # RECE derives from the bare concepts
        guides = [new[0]] * len(concepts)
        c_concepts = embed(pipe, concepts)  # [K, 77, d]
        c_guides = embed(pipe, guides)
        c_keep = embed(pipe, rece_preserved(keep, len(concepts), p.rece_empty_prompt)).reshape(
            -1, c_concepts.shape[-1])
        projs = cross_attention_projections(pipe.unet, p.with_to_k, who)
        for _ in range(p.epochs):
            current = [proj.weight.detach().double() for proj in projs]
            adv, errs = regenerating_embeddings(current, original, c_concepts, p.regular_scale)
            self.history.append(errs)
            for proj, w in zip(projs, current, strict=True):
                normal = Normal(*w.shape, device=w.device)
                for k in range(len(concepts)):
                    normal.add(adv[k], erase_targets(w, adv[k], c_guides[k], p.technique), p.rece_erase_scale)
                normal.add(c_keep, c_keep.to(w) @ w.T, p.rece_preserve_scale)
                set_weight(proj, solve(w, normal, p.rece_lamb))
        return pipe


def rece_preserved(keep: list[str], n_concepts: int, empty: str = "per_concept") -> list[str]:
    """The RECE steps' preserved texts: ``keep`` (the empty prompt first, then the preserve
    concepts) with the empty prompt repeated once per erased concept for ``per_concept``."""
    rest = [t for t in keep if t != ""]
    return [""] * (n_concepts if empty == "per_concept" else 1) + rest


def regenerating_embeddings(current: list[torch.Tensor], original: list[torch.Tensor], c: torch.Tensor,
                            gamma: float) -> tuple[torch.Tensor, list[float]]:
    """``c'`` = (Σ W'ᵀW' + γI)⁻¹ Σ W'ᵀ W c for every token of every concept ``c`` [K, T, d].

    Returns ``c'`` [K, T, d] (float64) and, per concept, the relative error with which the edited
    projections reproduce the original outputs from ``c'``.
    """
    import torch

    d = c.shape[-1]
    m = gamma * torch.eye(d, dtype=torch.float64, device=c.device)
    n = torch.zeros(d, d, dtype=torch.float64, device=c.device)
    for w_new, w_old in zip(current, original, strict=True):
        m += w_new.T @ w_new
        n += w_new.T @ w_old
    coef = torch.linalg.solve(m, n)  # d × d
    cols = c.double().reshape(-1, d)
    adv = (cols @ coef.T).reshape(c.shape)
    errs = []
    for k in range(c.shape[0]):
        ck = c[k].double()
        num = sum(((adv[k] @ wn.T) - (ck @ wo.T)).norm() ** 2 for wn, wo in zip(current, original, strict=True))
        den = sum((ck @ wo.T).norm() ** 2 for wo in original)
        errs.append(float((num / den).sqrt()))
    return adv, errs
