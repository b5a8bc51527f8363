"""Shared machinery of the fine-tuning techniques (ESD, gradient ascent, task vectors, STEREO,
AdvUnlearn, Concept Ablation, CoGFD).

* parameter selection by name (the ESD / AdvUnlearn / Concept Ablation ``train_method`` sets);
* prompt encoding with or without gradients, frozen copies used as teachers;
* DDIM partial sampling from pure noise to an intermediate step ``k`` (ESD's ``quick_sample_till_t``);
* the DDPM forward process for diffusion-loss fine-tuning (``add_noise`` at a random timestep);
* generation of a technique's own training images with the base model;
* an optimizer factory and, on GPU, mixed precision (``fp16`` / ``bf16`` autocast with a grad
  scaler for fp16) and gradient checkpointing.

Everything is seeded from the run seed through explicit ``torch.Generator`` objects so that the
same spec trains the same weights.
"""

from __future__ import annotations

import copy
import random
from collections.abc import Callable, Iterable, Sequence
from contextlib import nullcontext
from typing import TYPE_CHECKING, Literal

from .._torch import no_grad
from ..components import Params
from ..models.prediction import denoising_target

if TYPE_CHECKING:
    import torch

Precision = Literal["no", "fp16", "bf16"]


class TrainingParams(Params):
    """Execution settings shared by every fine-tuning technique (no effect on the algorithm)."""

    #: autocast precision for the forward passes; only used on CUDA (CPU always trains in fp32)
    mixed_precision: Precision = "no"
    #: trade compute for memory on GPU (UNet / text encoder activations are recomputed)
    gradient_checkpointing: bool = False


# -- parameter selection --------------------------------------------------------------------------
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


def make_optimizer(params: Iterable[torch.nn.Parameter], lr: float, kind: str = "adam", **kw):
    import torch

    params = list(params)
    if kind == "adamw":
        return torch.optim.AdamW(params, lr=lr, **kw)
    return torch.optim.Adam(params, lr=lr, **kw)


# -- devices, precision, checkpointing ------------------------------------------------------------
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


# -- text ---------------------------------------------------------------------------------------------
def token_ids(pipe, prompts: Sequence[str]) -> torch.Tensor:
    tok = pipe.tokenizer(list(prompts), padding="max_length", max_length=pipe.tokenizer.model_max_length,
                         truncation=True, return_tensors="pt")
    return tok.input_ids.to(pipe.text_encoder.device)


def encode(pipe, prompts: Sequence[str], text_encoder=None, grad: bool = False) -> torch.Tensor:
    """Last hidden states ``[N, 77, d]`` of ``prompts`` (SD's conditioning)."""
    import torch

    enc = text_encoder or pipe.text_encoder
    ctx = nullcontext() if grad else torch.no_grad()
    with ctx:
        return enc(token_ids(pipe, prompts))[0]


def word_embeddings(text_encoder) -> torch.nn.Embedding:
    return text_encoder.get_input_embeddings()


def encode_embeds(text_encoder, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Run a CLIP text encoder on given word embeddings ``[N, 77, d]`` (gradients flow to them).

    The token-embedding layer's output is replaced by ``inputs_embeds`` through a forward hook,
    so positional embeddings, the causal mask and the final layer norm are the model's own
    (whatever the transformers version); ``input_ids`` only locate the end token.
    """
    layer = text_encoder.get_input_embeddings()
    handle = layer.register_forward_hook(lambda _m, _i, _o: inputs_embeds.to(_o.dtype))
    try:
        return text_encoder(input_ids.to(inputs_embeds.device))[0]
    finally:
        handle.remove()


def prompt_length(pipe, prompt: str) -> int:
    """Number of word tokens of ``prompt`` (without start / end tokens)."""
    return len(pipe.tokenizer(prompt, add_special_tokens=False).input_ids)


# -- schedules and sampling ---------------------------------------------------------------------------
def latent_shape(pipe, height: int, width: int) -> tuple[int, int, int]:
    f = pipe.vae_scale_factor
    return (pipe.unet.config.in_channels, height // f, width // f)


def ddim_scheduler(pipe, steps: int):
    from diffusers import DDIMScheduler

    sched = DDIMScheduler.from_config(pipe.scheduler.config)
    sched.set_timesteps(steps, device=pipe.unet.device)
    return sched


def predict(unet, latents, t, cond, autocast=nullcontext) -> torch.Tensor:
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


def randn(shape, generator: torch.Generator, device) -> torch.Tensor:
    import torch

    return torch.randn(shape, generator=generator).to(device)


# -- training images ----------------------------------------------------------------------------------
@no_grad
def generate_latents(pipe, prompts: Sequence[str], seeds: Sequence[int], steps: int, guidance: float,
                     height: int, width: int, batch: int = 8, eta: float = 0.0, label: str = "") -> torch.Tensor:
    """Images of ``prompts`` from the (base) pipeline, decoded to pixels and re-encoded with the
    VAE (as a training script reading the saved images would), as scaled latents ``[N, C, h, w]``."""
    import torch
    from diffusers import DDIMScheduler

    saved = pipe.scheduler
    pipe.scheduler = DDIMScheduler.from_config(saved.config)
    out = []
    from ..progress import progress_bar

    try:
        with progress_bar(label or "training images", len(prompts)) as advance:
            for i in range(0, len(prompts), batch):
                ps, ss = list(prompts[i: i + batch]), list(seeds[i: i + batch])
                gens = [torch.Generator().manual_seed(int(s)) for s in ss]
                img = pipe(ps, num_inference_steps=steps, guidance_scale=guidance, height=height, width=width,
                           generator=gens, eta=eta, output_type="pt").images
                out.append(encode_images(pipe, img * 2 - 1, gens[0]))
                advance(len(ps))
    finally:
        pipe.scheduler = saved
    return torch.cat(out)


@no_grad
def encode_images(pipe, pixels: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    """Pixels in [-1, 1] → VAE latents (a sample of the posterior, scaled)."""
    import torch

    vae = pipe.vae
    dist = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist
    z = dist.mean + dist.std * torch.randn(dist.mean.shape, generator=generator).to(dist.mean)
    return (z * vae.config.scaling_factor).float()


def hflip(latents: torch.Tensor, generator: torch.Generator, p: float = 0.5) -> torch.Tensor:
    """Random horizontal flips (flipping the latent equals flipping the image up to the VAE)."""
    import torch

    flip = torch.rand(latents.shape[0], generator=generator) < p
    return torch.where(flip.view(-1, 1, 1, 1).to(latents.device), latents.flip(-1), latents)


def concept_words(ctx, prompts: Sequence[str] | None) -> list[str]:
    """Training prompts for the erased concept: the given list, else the concept's name."""
    out = [p for p in (prompts or (ctx.concept.name,)) if p.strip()]
    if not out:
        raise ValueError("no prompts for the erased concept")
    return out


def retain_words(ctx, prompts: Sequence[str] | None, templates: Sequence[str] = ("{}",)) -> list[str]:
    """Prompts whose behaviour must be kept: given, else the concept's retain concepts (the toy
    world's other shapes on the toy model)."""
    if prompts is not None:
        return [p for p in prompts if p.strip()]
    from ..concept_sets import retain_concepts

    return [t.format(c) for c in retain_concepts(ctx) for t in templates]


# -- diffusers' train_text_to_image recipe (gradient ascent, task vectors) ----------------------------
def concept_image_prompt(ctx, template: str | None) -> str:
    """The When-Are-Concepts-Erased data prompt: "a picture of a <object>" / "a painting in the
    style of <style>"."""
    if template is None:
        template = "a painting in the style of {}" if ctx.concept.kind == "style" else "a picture of a {}"
    return template.format(ctx.concept.name)


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

    from ..progress import progress_bar

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


# -- prompt sets ----------------------------------------------------------------------------------------
GENERIC_TEMPLATES = ("a photo of a {}", "a picture of a {}", "an image of a {}", "a drawing of a {}", "a {}")


def is_toy(ctx) -> bool:
    return "toy" in ctx.model.tags


def caption_prompts(ctx, word: str) -> list[str]:
    """Captions of images of ``word``: on the toy model, its training-caption templates over every
    colour and fill style ("a striped red shape", ...); elsewhere generic photo templates."""
    if is_toy(ctx):
        from ..toyworld import COLOURS, STYLES
        from ..toyworld.concepts import TEMPLATES, describe, fill_template

        return [fill_template(t, describe(word, c, s)) for t in TEMPLATES for c in COLOURS for s in STYLES]
    return [t.format(word) for t in GENERIC_TEMPLATES]


def default_anchor(ctx) -> str | None:
    """The concept's anchor (a neutral replacement): the toy world's "shape" for its objects."""
    if is_toy(ctx):
        from ..toyworld import toy_concept

        try:
            return toy_concept(ctx.concept.name).anchor or None
        except Exception:
            return None
    return None
