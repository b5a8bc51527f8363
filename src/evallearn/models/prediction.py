"""The UNet's training target, for epsilon- and v-prediction models alike."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch



def denoising_target(scheduler_or_pipe, latents: torch.Tensor, noise: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """What the UNet is trained to predict at ``x_t``: the noise (epsilon models, SD 1.x) or the
    velocity ``sqrt(a) * noise - sqrt(1 - a) * x_0`` (v-prediction models, SD 2.x; Salimans & Ho, 2022)."""
    sched = getattr(scheduler_or_pipe, "scheduler", scheduler_or_pipe)
    kind = sched.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        from diffusers import DDPMScheduler

        return DDPMScheduler.from_config(sched.config).get_velocity(latents, noise, t)
    raise ValueError(f"prediction_type '{kind}' is not supported (epsilon or v_prediction)")
