"""The ESD objective (Gandikota et al., "Erasing Concepts from Diffusion Models", ICCV 2023),
shared by ESD, STEREO and AdvUnlearn.

From a latent ``x`` at timestep ``t`` on a partial DDIM trajectory, a frozen teacher gives the
negatively guided target ``ε*(x, t) − η (ε*(x, t, c) − ε*(x, t))`` and the student's
conditional prediction is regressed onto it (mean squared error). STEREO's first stage uses the
same skeleton with its own target (see ``stereo.py``); AdvUnlearn conditions the student on an
adversarial embedding instead of the plain prompt.
"""

from __future__ import annotations

from contextlib import nullcontext
from typing import TYPE_CHECKING

from ...models.sampling import ddim_sample_until, predict, randn

if TYPE_CHECKING:
    import torch


def esd_trajectory(unet, sampler, sched, cond, null, guidance: float, shape, gen: torch.Generator, k: int,
                   autocast=nullcontext) -> torch.Tensor:
    """``x`` at ``sched.timesteps[k]``: ``k`` DDIM steps with classifier-free guidance ``guidance``
    by ``sampler`` (the student ``unet`` or its teacher) from noise drawn from ``gen``; ``unet``'s
    train/eval mode is restored afterwards."""
    start = randn(shape, gen, unet.device)
    was_training = unet.training
    unet.eval()
    x = ddim_sample_until(sampler, sched, cond, null, guidance, start, k, autocast)
    unet.train(was_training)
    return x


def esd_target(teacher, x: torch.Tensor, t, cond: torch.Tensor, null: torch.Tensor, negative_guidance: float,
               autocast=nullcontext) -> torch.Tensor:
    """The teacher's negatively guided noise ``e_0 − η (e_c − e_0)`` (one batched pass over the
    unconditional and conditional halves, no gradients)."""
    import torch

    n = x.shape[0]
    with torch.no_grad():
        e = predict(teacher, torch.cat([x, x]), t, torch.cat([null.expand(n, -1, -1), cond.expand(n, -1, -1)]),
                    autocast)
        e_0, e_c = e.chunk(2)
        return e_0 - negative_guidance * (e_c - e_0)


def esd_loss(student, x: torch.Tensor, t, cond: torch.Tensor, target: torch.Tensor,
             autocast=nullcontext) -> torch.Tensor:
    """Mean squared error between the student's prediction conditioned on ``cond`` and ``target``."""
    import torch

    e_n = predict(student, x, t, cond.expand(x.shape[0], -1, -1), autocast)
    return torch.nn.functional.mse_loss(e_n, target)
