"""Gradient ascent (GA) as configured in "When Are Concepts Erased From Diffusion Models?"
(Lu, Kriplani, Gandikota, Pham, Bau, Hegde & Cohen, NeurIPS 2025, arXiv:2505.17013; code:
kevinlu4588/WhenAreConceptsErased, ``gradient_ascent/train_ga_model.sh`` with diffusers'
``train_text_to_image.py`` whose MSE loss is negated, at commit eb2f9d6).

The base model generates ``num_images`` images of the concept from "a picture of a <object>"
("a painting in the style of <style>" for styles); the whole UNet is then trained to *increase*
the standard diffusion loss on them: AdamW, constant lr 1e-5, batch 5, gradient accumulation 4,
gradient clipping at 1, random horizontal flips, the raw weights as the result (their command
passes ``--use_ema``, but their modified script never steps the EMA copy and saves the raw UNet;
``use_ema: true`` keeps an EMA copy instead). The authors' run
stops after 80 micro-batches (their ``--step_finisher`` counts micro-batches), i.e. 20 optimiser
updates, which is the default ``updates``. fp16 and gradient checkpointing (their settings on
GPU) are the ``mixed_precision`` / ``gradient_checkpointing`` options.
"""

from __future__ import annotations

from pydantic import Field

from ..components import Supports, kinds
from ..context import RunContext
from . import training as T
from .base import Technique


class FinetuneDataParams(T.TrainingParams):
    #: prompt template for the training images ("{}" = the concept); default by concept kind
    prompt_template: str | None = None
    num_images: int = Field(10, ge=1)
    #: sampler used to make the training images with the base model
    image_steps: int = Field(50, ge=1)
    image_guidance: float = Field(7.5, ge=0)
    updates: int = Field(20, ge=1)
    batch_size: int = Field(5, ge=1)
    grad_accum: int = Field(4, ge=1)
    lr: float = Field(1e-5, gt=0)
    max_grad_norm: float = Field(1.0, gt=0)
    use_ema: bool = True
    ema_decay: float = Field(0.9999, gt=0, lt=1)
    random_flip: bool = True


def training_data(pipe, ctx: RunContext, p: FinetuneDataParams):
    prompt = T.concept_image_prompt(ctx, p.prompt_template)
    prompts = [prompt] * p.num_images
    seeds = [ctx.seed * 1_000_003 + i for i in range(p.num_images)]
    latents = T.generate_latents(pipe, prompts, seeds, p.image_steps, p.image_guidance, ctx.height, ctx.width)
    return latents, prompts


def finetune(pipe, ctx: RunContext, p: FinetuneDataParams, sign: float, label: str):
    gen = T.seed_everything(ctx.seed)
    latents, prompts = training_data(pipe, ctx, p)
    amp = T.setup_execution(pipe, p)
    T.text_to_image_finetune(pipe, latents, prompts, sign=sign, updates=p.updates, batch_size=p.batch_size,
                             grad_accum=p.grad_accum, lr=p.lr, max_grad_norm=p.max_grad_norm, use_ema=p.use_ema,
                             ema_decay=p.ema_decay, flip=p.random_flip, gen=gen, amp=amp, label=label)
    return pipe


class GradientAscentParams(FinetuneDataParams):
    #: the result is the raw weights, as the authors' script saves them (True: an EMA copy)
    use_ema: bool = False


class GradientAscent(Technique):
    description = "Gradient ascent on the diffusion loss of the concept's own images (full UNet)."
    paper = "Lu et al., NeurIPS 2025 (When Are Concepts Erased From Diffusion Models?)"
    edits = ("unet",)
    supports = Supports(model_tags=kinds("sd1", "sd2"))
    Params = GradientAscentParams

    def apply(self, pipe, ctx: RunContext):
        return finetune(pipe, ctx, self.params, sign=-1.0, label="gradient ascent")
