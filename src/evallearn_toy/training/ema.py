"""The exponential moving average of the text-to-image weights (what the trainer saves).

Its own small class, not diffusers' ``EMAModel`` (``diffusers.training_utils``): both use decay
``min(max_decay, (1+s)/(10+s))``, but ``EMAModel``'s first update uses decay 0 (it copies the
weights) where this one uses 0.1, and it updates by ``s - (1-d)(s - p)`` where this one calls
``lerp``, which rounds differently; either would change the weights the shipped ones were trained
with. This one also averages several modules in one fused call per module and copies buffers.
"""

from __future__ import annotations

import copy

import torch


class EMA:
    """Exponential moving average of parameters, decay ``min(max_decay, (1+s)/(10+s))`` at step ``s``."""

    def __init__(self, modules, max_decay: float = 0.999):
        self.max_decay = max_decay
        self.shadow = [copy.deepcopy(m).eval().requires_grad_(False) for m in modules]

    @torch.no_grad()
    def update(self, modules, step: int, foreach: bool = True) -> None:
        d = min(self.max_decay, (1 + step) / (10 + step))
        for sm, m in zip(self.shadow, modules, strict=True):
            shadow, live = list(sm.parameters()), [p.detach() for p in m.parameters()]
            if foreach:  # one fused call instead of a Python loop over ~400 small tensors
                torch._foreach_lerp_(shadow, live, 1 - d)
            else:
                for ps, p in zip(shadow, live, strict=True):
                    ps.lerp_(p, 1 - d)
            for bs, b in zip(sm.buffers(), m.buffers(), strict=True):
                bs.copy_(b)
