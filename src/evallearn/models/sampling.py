"""Seeded sampling helpers shared by techniques, probes and SAEs.

* per-seed CPU generators and initial latents drawn exactly as diffusers draws them for a list
  of generators (so an image made here and one made by the run's generator from the same seed
  start from the same noise);
* a UNet noise prediction, DDIM partial sampling with classifier-free guidance, and the DDPM
  forward process (``add_noise`` at a random timestep);
* VAE encoding of pixels in [-1, 1] to scaled latents (posterior mean or a seeded sample).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING

from .._torch import no_grad

if TYPE_CHECKING:
    import torch


def seed_generators(seeds: Sequence[int], offset: int = 0) -> list[torch.Generator]:
    """One CPU ``torch.Generator`` per seed, seeded with ``seed + offset``."""
    import torch

    return [torch.Generator("cpu").manual_seed(int(s) + offset) for s in seeds]


def latent_shape(pipe, height: int, width: int) -> tuple[int, int, int]:
    """``(C, h, w)`` of the pipeline's latents for a ``height`` × ``width`` image."""
    f = pipe.vae_scale_factor
    return (pipe.unet.config.in_channels, height // f, width // f)


def initial_latents(pipe, seeds: Sequence[int], height: int, width: int) -> torch.Tensor:
    """Initial latents ``[len(seeds), C, h, w]``: one float32 draw per seed from a CPU
    ``Generator(seed)``, as diffusers draws them for a list of generators, cast to the UNet's
    device and dtype."""
    import torch

    shape = (1, *latent_shape(pipe, height, width))
    out = [torch.randn(shape, generator=g, dtype=torch.float32) for g in seed_generators(seeds)]
    return torch.cat(out).to(pipe.device, pipe.unet.dtype)


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    """A float32 normal draw from ``generator`` (on the CPU), moved to ``device``."""
    import torch

    return torch.randn(shape, generator=generator).to(device)


def ddim_scheduler(pipe, steps: int):
    """A DDIM scheduler from the pipeline's scheduler config, set to ``steps`` timesteps."""
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.unet.device)
    return sched


def predict(unet, latents, t, cond, autocast=nullcontext) -> torch.Tensor:
    """The UNet's float32 output at timestep ``t`` (a scalar is expanded to the batch)."""
    import torch

    with autocast():
        t = torch.as_tensor(t, device=latents.device)
        if t.ndim == 0:
            t = t.expand(latents.shape[0])
        return unet(latents, t, encoder_hidden_states=cond.to(latents.device)).sample.float()


@no_grad
def ddim_sample_until(unet, sched, cond, uncond, guidance: float, start: torch.Tensor, stop: int,
                      autocast=nullcontext) -> torch.Tensor:
    """DDIM (η = 0) with classifier-free guidance from pure noise ``start`` for ``stop`` steps of
    ``sched.timesteps``; returns ``x`` at noise level ``sched.timesteps[stop]``."""
    import torch

    x = start * sched.init_noise_sigma
    n = x.shape[0]
    cond = cond.expand(n, -1, -1) if cond.shape[0] == 1 else cond
    uncond = uncond.expand(n, -1, -1)
    for t in sched.timesteps[:stop]:
        e = predict(unet, torch.cat([x, x]), t, torch.cat([uncond, cond]), autocast)
        e_u, e_c = e.chunk(2)
        eps = e_u + guidance * (e_c - e_u)
        x = sched.step(eps, t, x).prev_sample
    return x


def add_noise(pipe, latents: torch.Tensor, generator: torch.Generator,
              t_range: tuple[int, int] | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DDPM forward process: ``(x_t, noise, t)`` with ``t`` uniform on the training timesteps."""
    import torch
    from diffusers import DDPMScheduler

    sched = DDPMScheduler.from_config(pipe.scheduler.config)
    lo, hi = t_range or (0, sched.config.num_train_timesteps)
    t = torch.randint(lo, hi, (latents.shape[0],), generator=generator).to(latents.device)
    noise = torch.randn(latents.shape, generator=generator).to(latents)
    return sched.add_noise(latents, noise, t), noise, t


@no_grad
def vae_posterior(vae, pixels: torch.Tensor):
    """The VAE's latent distribution (unscaled) of pixels in [-1, 1] ``[N, 3, H, W]``."""
    return vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist


@no_grad
def vae_encode(vae, pixels: torch.Tensor, generator: torch.Generator | None = None,
               sample: bool = True) -> torch.Tensor:
    """Pixels in [-1, 1] → scaled float32 VAE latents: the posterior mean, or (``sample``) a
    sample ``mean + std · ε`` with ε drawn in float32 from ``generator`` on the CPU."""
    import torch

    dist = vae_posterior(vae, pixels)
    z = dist.mean
    if sample:
        z = z + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
    return (z * vae.config.scaling_factor).float()
