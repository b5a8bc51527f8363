"""Execution settings of the fine-tuning techniques: mixed precision (``fp16`` / ``bf16``
autocast with a grad scaler for fp16, CUDA only), gradient checkpointing, the optimizer factory
and seeding. None of them changes the algorithm."""

from __future__ import annotations

import random
from collections.abc import Iterable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

from ...components import Params

if TYPE_CHECKING:
    import torch

Precision = Literal["no", "fp16", "bf16"]


class TrainingParams(Params):
    """Execution settings shared by every fine-tuning technique (no effect on the algorithm)."""

    #: autocast precision for the forward passes; only used on CUDA (CPU always trains in fp32)
    mixed_precision: Precision = "no"
    #: trade compute for memory on GPU (UNet / text encoder activations are recomputed)
    gradient_checkpointing: bool = False


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, kind: str = "adam", **kw):
    import torch

    params = list(params)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, **kw)
    return torch.optim.Adam(params, lr=lr, **kw)


class Precisioned:
    """Autocast + (fp16) grad scaling on CUDA; a no-op elsewhere."""

    def __init__(self, device: torch.device | str, precision: str = "no") -> None:
        import torch

        self.device = torch.device(device)
        cuda = self.device.type == "cuda"
        self.dtype = {"fp16": torch.float16, "bf16": torch.bfloat16}.get(precision) if cuda else None
        self.scaler = torch.amp.GradScaler("cuda") if self.dtype == torch.float16 else None

    def autocast(self):
        import torch

        if self.dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype)

    def backward(self, loss: torch.Tensor) -> None:
        (self.scaler.scale(loss) if self.scaler else loss).backward()

    def step(self, opt: torch.optim.Optimizer, params=None, max_grad_norm: float | None = None) -> None:
        import torch

        if self.scaler:
            self.scaler.unscale_(opt)
        if max_grad_norm and params is not None:
            torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
        if self.scaler:
            self.scaler.step(opt)
            self.scaler.update()
        else:
            opt.step()


def setup_execution(pipe, params: TrainingParams, modules: Sequence[str] = ("unet",)) -> Precisioned:
    """Gradient checkpointing (GPU only, when asked) on the trained modules; the precision helper."""
    device = pipe.unet.device
    if params.gradient_checkpointing and device.type == "cuda":
        for name in modules:
            mod = getattr(pipe, name)
            if hasattr(mod, "enable_gradient_checkpointing"):
                mod.enable_gradient_checkpointing()
            elif hasattr(mod, "gradient_checkpointing_enable"):
                mod.gradient_checkpointing_enable()
    return Precisioned(device, params.mixed_precision)


def seed_everything(seed: int) -> torch.Generator:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)
