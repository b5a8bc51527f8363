"""Shared machinery of the fine-tuning techniques (ESD, gradient ascent, task vectors, STEREO,
AdvUnlearn, Concept Ablation, CoGFD), by concern:

* :mod:`.selection` — which parameters are trained (the ESD / AdvUnlearn / Concept Ablation
  ``train_method`` sets) and frozen teacher copies;
* :mod:`.precision` — execution settings (mixed precision, gradient checkpointing), the
  optimizer factory and seeding;
* :mod:`.objectives` — the ESD objective shared by ESD, STEREO and AdvUnlearn;
* :mod:`.data` — training images generated with the base model and the prompt sets;
* :mod:`.recipes` — diffusers' ``train_text_to_image`` fine-tune (gradient ascent, task vectors).

Text encoding and seeded sampling come from :mod:`evallearn.models.text` and
:mod:`evallearn.models.sampling`; the names the techniques use are re-exported here.
"""

from ...models.prediction import denoising_target
from ...models.sampling import add_noise, ddim_sample_until, ddim_scheduler, latent_shape, predict, randn
from ...models.text import encode_embeds, prompt_length, token_ids, word_embeddings
from ...models.text import encode_prompts as encode
from .data import (
    GENERIC_TEMPLATES,
    caption_prompts,
    concept_image_prompt,
    concept_words,
    default_anchor,
    encode_images,
    generate_latents,
    retain_words,
)
from .objectives import esd_loss, esd_target, esd_trajectory
from .precision import Precision, Precisioned, TrainingParams, make_optimizer, seed_everything, setup_execution
from .recipes import hflip, text_to_image_finetune
from .selection import UNetMethod, frozen_copy, select_params, unet_param_filter

__all__ = [
    "GENERIC_TEMPLATES", "Precision", "Precisioned", "TrainingParams", "UNetMethod", "add_noise", "caption_prompts",
    "concept_image_prompt", "concept_words", "ddim_sample_until", "ddim_scheduler", "default_anchor",
    "denoising_target", "encode", "encode_embeds", "encode_images", "esd_loss", "esd_target", "esd_trajectory",
    "frozen_copy", "generate_latents", "hflip", "latent_shape", "make_optimizer", "predict",
    "prompt_length", "randn", "retain_words", "seed_everything", "select_params", "setup_execution",
    "text_to_image_finetune", "token_ids", "unet_param_filter", "word_embeddings",
]
