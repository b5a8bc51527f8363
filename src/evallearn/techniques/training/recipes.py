"""diffusers' ``train_text_to_image`` recipe (gradient ascent, task vectors)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from ...models.prediction import denoising_target
from ...models.sampling import add_noise
from ...models.text import encode_prompts as encode
from .precision import Precisioned
from .selection import select_params, unet_param_filter

if TYPE_CHECKING:
    import torch


def hflip(latents: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Random horizontal flips (flipping the latent equals flipping the image up to the VAE)."""
    import torch

    flip = torch.rand(latents.shape[0], generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1).to(latents.device), latents.flip(-1), latents)


def text_to_image_finetune(pipe, latents: torch.Tensor, prompts: Sequence[str], *, sign: float, updates: int,
                           batch_size: int, grad_accum: int, lr: float, max_grad_norm: float, use_ema: bool,
                           ema_decay: float, flip: bool, gen: torch.Generator, amp: Precisioned,
                           label: str) -> None:
    """Full-UNet fine-tune with the standard diffusion loss multiplied by ``sign`` (−1 = gradient
    ascent), as diffusers' ``train_text_to_image.py``: AdamW (β 0.9/0.999, wd 1e-2, ε 1e-8),
    constant lr, gradient accumulation, gradient clipping, optional EMA whose weights are the
    result. ``updates`` counts optimiser updates (micro-batches = updates × grad_accum)."""
    import torch
    from diffusers.training_utils import EMAModel

    from ...progress import progress_bar

    unet = pipe.unet
    params = select_params(unet, unet_param_filter("full"))
    pipe.text_encoder.requires_grad_(False)
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    ema = EMAModel(params, decay=ema_decay) if use_ema else None
    cond_all = encode(pipe, prompts)
    n = latents.shape[0]
    order: list[int] = []
    unet.train()
    with progress_bar(label, updates) as advance:
        for _ in range(updates):
            opt.zero_grad(set_to_none=True)
            total = 0.0
            for _ in range(grad_accum):
                if len(order) < batch_size:  # epochs of a random permutation, as a shuffled loader
                    order += torch.randperm(n, generator=gen).tolist()
                idx, order = order[:batch_size], order[batch_size:]
                x0 = latents[idx].to(unet.device)
                if flip:
                    x0 = hflip(x0, gen)
                xt, noise, t = add_noise(pipe, x0, gen)
                with amp.autocast():
                    pred = unet(xt, t, encoder_hidden_states=cond_all[idx]).sample.float()
                loss = torch.nn.functional.mse_loss(pred, denoising_target(pipe, x0, noise, t)) / grad_accum
                amp.backward(sign * loss)
                total += loss.item()
            amp.step(opt, params, max_grad_norm)
            if ema is not None:
                ema.step(params)
            advance(1, loss=f"{total:.4f}")
    if ema is not None:
        ema.copy_to(params)
    unet.eval()
    unet.requires_grad_(False)
