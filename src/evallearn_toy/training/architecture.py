"""The toy text-to-image model's architecture: the modules, noise schedules and pipeline.

The modules are the shared small builders of :mod:`evallearn.models.tiny` (the same
``UNet2DConditionModel`` / ``AutoencoderKL`` / ``CLIPTextModel`` classes as Stable Diffusion 1.x)
at the toy world's sizes:

* VAE: attention-free, factor-2 latent (32x32x3 -> 16x16x4);
* UNet: three blocks (24, 48, 64 channels by default), cross-attention in the last two, 8 groups;
* text encoder: the toy CLIP's text tower (:func:`evallearn_toy.tiny_clip.clip_text_config`),
  whose trained weights initialise it, as Stable Diffusion uses CLIP's text tower.

:func:`build_unet`, :func:`build_vae` and :func:`build_text_encoder` rebuild exactly the
architecture of the shipped weights (``tests/test_toy_train.py`` compares state-dict keys, shapes
and configs).
"""

from __future__ import annotations

import copy
from pathlib import Path

from evallearn.models import tiny

from ..render import IMAGE_SIZE
from ..tiny_clip import TEXT_HIDDEN, clip_text_config

#: the UNet's block widths of the shipped model
UNET_CHANNELS = (24, 48, 64)


def build_unet(channels: tuple[int, int, int] = UNET_CHANNELS):
    """The toy UNet on 16x16x4 latents, conditioned on the 64-wide text encoder."""
    return tiny.build_unet(channels, cross_attention_dim=TEXT_HIDDEN, norm_num_groups=8,
                           sample_size=IMAGE_SIZE // 2)  # fmt: skip


def build_vae():
    """The toy VAE on 32x32 images."""
    return tiny.build_vae(sample_size=IMAGE_SIZE)


def build_text_encoder():
    """The toy pipeline's ``CLIPTextModel``: the toy CLIP's text tower."""
    return tiny.build_text_encoder(clip_text_config())


def schedule_config(zero_snr: bool, prediction_type: str) -> dict:
    """Stable Diffusion's noise schedule (scaled-linear betas 0.00085-0.012, 1000 steps); with
    ``zero_snr`` rescaled to zero terminal SNR and sampled with "trailing" timesteps, as Lin et al.
    (WACV 2024, "Common Diffusion Noise Schedules and Sample Steps are Flawed") prescribe; that
    needs v-prediction (Salimans & Ho, 2022), which Stable Diffusion 2.x uses."""
    cfg = dict(num_train_timesteps=1000, **tiny.SD_BETAS, prediction_type=prediction_type)
    if zero_snr:
        cfg.update(rescale_betas_zero_snr=True, timestep_spacing="trailing")
    return cfg


def noise_scheduler(zero_snr: bool = False, prediction_type: str = "epsilon"):
    """The DDPM forward process the UNet is trained on."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(**schedule_config(zero_snr, prediction_type))


def sampling_scheduler(zero_snr: bool = False, prediction_type: str = "epsilon"):
    """The DDIM sampler shipped with the pipeline (SD 1.x's settings)."""
    from diffusers import DDIMScheduler

    return DDIMScheduler(**schedule_config(zero_snr, prediction_type), clip_sample=False, set_alpha_to_one=False,
                         steps_offset=0 if zero_snr else 1)  # fmt: skip


def make_pipeline(unet, vae, text_encoder, scheduler=None):
    """A ``StableDiffusionPipeline`` of the toy modules (default sampler: :func:`sampling_scheduler`)."""
    return tiny.assemble_pipeline(unet, vae, text_encoder, scheduler or sampling_scheduler())


def plain(module):
    """A copy in the default (contiguous) memory format, as saving and sampling expect."""
    import torch

    return copy.deepcopy(module).to(memory_format=torch.contiguous_format).eval()


def save_fp16(pipe, path: Path) -> None:
    """Save with fp16 weight files for the UNet and text encoder (half the size); they load back
    into fp32 modules."""
    pipe.save_pretrained(path, safe_serialization=True)
    from safetensors.torch import load_file, save_file

    for sub in ("unet", "text_encoder"):
        for f in (path / sub).glob("*.safetensors"):
            sd = load_file(str(f))
            save_file({k: v.half() if v.is_floating_point() else v for k, v in sd.items()}, str(f),
                      metadata={"format": "pt"})  # fmt: skip
