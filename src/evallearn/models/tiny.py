"""Tiny random-weight pipelines and CLIP models for tests and smoke runs.

They are built from the same diffusers / transformers classes as Stable Diffusion 1.x
(``UNet2DConditionModel``, ``AutoencoderKL``, ``CLIPTextModel``, the real CLIP tokenizer), so
code that runs on them runs on SD. Weights are random: images are noise-like, which is what
unit tests of the harness need.
"""

from __future__ import annotations

from pathlib import Path

from .tokenizer import load_clip_tokenizer


def clip_text_config(hidden_size: int, intermediate_size: int = 37, heads: int = 4, layers: int = 2) -> dict:
    """A small CLIP text-encoder config with the real vocabulary and special-token ids."""
    return dict(hidden_size=hidden_size, intermediate_size=intermediate_size, num_attention_heads=heads,
                num_hidden_layers=layers, vocab_size=49408, max_position_embeddings=77,
                bos_token_id=49406, eos_token_id=49407, pad_token_id=49407)


#: Stable Diffusion 1.x's noise schedule (scaled-linear betas from 0.00085 to 0.012, 1000 steps).
SD_BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


def build_unet(channels: tuple[int, ...], cross_attention_dim: int, norm_num_groups: int, sample_size: int):
    """A small ``UNet2DConditionModel`` in SD's layout: a plain first down block, cross-attention in
    the others (mirrored on the way up), one layer per block, 8-dimensional attention heads."""
    from diffusers import UNet2DConditionModel

    n = len(channels)
    return UNet2DConditionModel(
        block_out_channels=tuple(channels),
        layers_per_block=1,
        sample_size=sample_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", *("CrossAttnDownBlock2D",) * (n - 1)),
        up_block_types=(*("CrossAttnUpBlock2D",) * (n - 1), "UpBlock2D"),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=8,
        norm_num_groups=norm_num_groups,
    )


def build_vae(sample_size: int):
    """An attention-free ``AutoencoderKL`` with a factor-2 latent (3 -> 4 channels, two blocks of 32)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        block_out_channels=[32, 32],
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=sample_size,
        mid_block_add_attention=False,
    )


def build_text_encoder(config: dict):
    """A ``CLIPTextModel`` from a :func:`clip_text_config` dict."""
    from transformers import CLIPTextConfig, CLIPTextModel

    return CLIPTextModel(CLIPTextConfig(**config))


def assemble_pipeline(unet, vae, text_encoder, scheduler):
    """A ``StableDiffusionPipeline`` of these modules with the real CLIP tokenizer, no safety
    checker and no progress bar."""
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=load_clip_tokenizer(),
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def build_tiny_pipeline(seed: int = 0, cross_attention_dim: int = 32, sample_size: int = 32):
    """A random ``StableDiffusionPipeline`` (latent ``sample_size``, VAE factor 2, DDIM)."""
    import torch
    from diffusers import DDIMScheduler

    torch.manual_seed(seed)
    unet = build_unet((32, 64), cross_attention_dim, norm_num_groups=32, sample_size=sample_size)
    vae = build_vae(sample_size * 2)
    text_encoder = build_text_encoder(clip_text_config(cross_attention_dim))
    scheduler = DDIMScheduler(**SD_BETAS, clip_sample=False, set_alpha_to_one=False, steps_offset=1)
    return assemble_pipeline(unet, vae, text_encoder, scheduler)


def build_tiny_clip(seed: int = 0, projection_dim: int = 16, image_size: int = 32):
    """A random ``CLIPModel`` + ``CLIPProcessor`` with the real CLIP tokenizer."""
    import torch
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    torch.manual_seed(seed)
    config = CLIPConfig(
        text_config=clip_text_config(32),
        vision_config=dict(
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            image_size=image_size,
            patch_size=8,
        ),
        projection_dim=projection_dim,
    )
    model = CLIPModel(config).eval()
    image_processor = CLIPImageProcessor(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    processor = CLIPProcessor(image_processor=image_processor, tokenizer=load_clip_tokenizer())
    return model, processor


def save_tiny_pipeline(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    build_tiny_pipeline(seed).save_pretrained(path)
    return path


def save_tiny_clip(path: str | Path, seed: int = 0) -> Path:
    path = Path(path)
    model, processor = build_tiny_clip(seed)
    model.save_pretrained(path)
    processor.save_pretrained(path)
    return path
