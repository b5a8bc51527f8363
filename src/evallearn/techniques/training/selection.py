"""Which parameters a fine-tuning technique trains, and frozen teacher copies."""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    import torch

UNetMethod = Literal["xattn", "noxattn", "full", "selfattn", "xattn-strict", "notime"]


def unet_param_filter(method: str) -> Callable[[str], bool]:
    """Names of UNet parameters trained by an ESD ``train_method`` (diffusers naming).

    ``noxattn`` (ESD-u) follows the paper-era CompVis script: everything except cross-attention
    (``attn2``), the time embedding and the output layers (``out.`` there, ``conv_norm_out`` /
    ``conv_out`` here).
    """

    def is_out(n: str) -> bool:
        return n.startswith(("conv_out.", "conv_norm_out."))

    table: dict[str, Callable[[str], bool]] = {
        "xattn": lambda n: "attn2" in n,
        "xattn-strict": lambda n: "attn2.to_k" in n or "attn2.to_v" in n,
        "selfattn": lambda n: "attn1" in n,
        "noxattn": lambda n: not ("attn2" in n or "time_embedding" in n or is_out(n)),
        "notime": lambda n: not ("time_embedding" in n or is_out(n)),
        "full": lambda n: True,
    }
    return table[method]


def select_params(module: torch.nn.Module, keep: Callable[[str], bool]) -> list[torch.nn.Parameter]:
    """Set ``requires_grad`` on the parameters whose name passes ``keep`` (and off on the rest)."""
    out = []
    for name, p in module.named_parameters():
        p.requires_grad_(bool(keep(name)))
        if p.requires_grad:
            out.append(p)
    if not out:
        raise ValueError("no trainable parameters selected")
    return out


def frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    teacher = copy.deepcopy(module)
    teacher.requires_grad_(False)
    teacher.eval()
    return teacher
