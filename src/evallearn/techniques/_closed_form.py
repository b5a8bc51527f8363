"""Shared pieces of the closed-form cross-attention editors (UCE, RECE, MACE).

All three edit the key and value projections ``W`` of every cross-attention block by solving a
ridge-regularised least-squares problem

    min_W'  λ ||W' - W_0||_F^2 + Σ_k s_k ||W' C_k - V_k||_F^2

whose minimiser is ``W' = (λ W_0 + Σ s_k V_k C_kᵀ)(λ I + Σ s_k C_k C_kᵀ)⁻¹``. :class:`Normal`
accumulates the two sums for one projection; :func:`solve` returns ``W'``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._torch import no_grad
from ..errors import UserError
from ..models import text

if TYPE_CHECKING:
    import torch


def cross_attention_layers(unet, who: str = "technique") -> list:
    """Every cross-attention (``attn2``) module of the UNet, in module order."""
    layers = [m for name, m in unet.named_modules() if name.endswith("attn2")]
    if not layers:
        raise UserError(f"{who}: the UNet has no cross-attention (attn2) layers to edit")
    return layers


def cross_attention_projections(unet, with_to_k: bool = True, who: str = "technique") -> list[torch.nn.Linear]:
    """Value projections of every ``attn2`` block, then (``with_to_k``) their key projections.

    The order (all values, then all keys) is the one of the authors' scripts.
    """
    layers = cross_attention_layers(unet, who)
    out = [layer.to_v for layer in layers]
    if with_to_k:
        out += [layer.to_k for layer in layers]
    return out


def tokenize(pipe, texts: list[str]):
    return text.tokenize(pipe.tokenizer, texts)


@no_grad
def embed(pipe, texts: list[str]) -> torch.Tensor:
    """Text-encoder hidden states ``[N, 77, d]`` as the UNet sees them (float32)."""
    ids = tokenize(pipe, texts).input_ids.to(pipe.text_encoder.device)
    return pipe.text_encoder(ids)[0].float()


def last_word_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last word token: BOS at 0, words 1..n, EOS at n+1."""
    return attention_mask.sum(-1) - 2


class Normal:
    """Running sums ``Σ s V Cᵀ`` (out × d) and ``Σ s C Cᵀ`` (d × d) for one projection, float64."""

    def __init__(self, out_dim: int, in_dim: int, device="cpu") -> None:
        import torch

        self.vc = torch.zeros(out_dim, in_dim, dtype=torch.float64, device=device)
        self.cc = torch.zeros(in_dim, in_dim, dtype=torch.float64, device=device)

    def add(self, contexts: torch.Tensor, values: torch.Tensor, scale: float = 1.0) -> None:
        """``contexts`` [N, d] (text-embedding columns), ``values`` [N, out] (their targets)."""
        if scale == 0 or contexts.numel() == 0:
            return
        c = contexts.reshape(-1, contexts.shape[-1]).to(self.cc)
        v = values.reshape(-1, values.shape[-1]).to(self.vc)
        self.vc += scale * v.T @ c
        self.cc += scale * c.T @ c

    def add_normal(self, other: Normal, scale: float = 1.0) -> None:
        self.vc += scale * other.vc
        self.cc += scale * other.cc


def solve(w0: torch.Tensor, normal: Normal, lamb: float) -> torch.Tensor:
    """``(λ W0 + Σ V Cᵀ)(λ I + Σ C Cᵀ)⁻¹`` in float64 (``solve`` with a symmetric matrix, not an
    inverse; a pseudo-inverse if the system is singular, e.g. λ = 0 with too few columns)."""
    import torch

    w = w0.detach().to(normal.vc)
    eye = torch.eye(w.shape[1], dtype=w.dtype, device=w.device)
    lhs = lamb * w + normal.vc
    rhs = lamb * eye + normal.cc
    try:
        return torch.linalg.solve(rhs, lhs.T).T
    except RuntimeError:  # singular
        return lhs @ torch.linalg.pinv(rhs, hermitian=True)


@no_grad
def set_weight(proj: torch.nn.Linear, weight: torch.Tensor) -> None:
    proj.weight.copy_(weight.to(proj.weight.dtype))
