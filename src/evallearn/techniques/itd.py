"""ItD — Interpret then Deactivate (Tian, Nan, Xu, Zhai, Qu, Liu, Ren, Jia & Zhang, 2025, "Sparse
Autoencoder as a Zero-Shot Classifier for Concept Erasing in Text-to-Image Diffusion Models",
arXiv:2503.09446; code: NANSirun/Interpret-then-deactivate, ``scripts/train_sae_text.py``,
``src/SAE/sae.py`` and ``eval_scripts/generate_images_scripts/generate_images.py``).

*Interpret.* A TopK sparse autoencoder is trained, unsupervised, on the token representations a
text-encoder layer writes to the residual stream (the output of ``encoder.layers.8`` of SD 1.4's
CLIP ViT-L: k = 64, 524 288 latents, every token of a prompt corpus). A prompt's concept is then a
set of SAE features. The target concept's features are found by contrast: for each prompt of the
concept, encoded alone, the ``top_features`` features with the largest activation over its tokens
(the start token excluded) are taken, less every feature that is among the ``top_features`` of any
retain prompt; their union over the concept's prompts is the set ``F`` to deactivate (128 per
prompt for celebrities, 256 for styles in the authors' scripts).

*Deactivate.* For an input prompt, the layer output ``h`` (every token) is encoded, the
activations of ``F`` on every token but the start token are multiplied by ``strength`` (−8), and
decoded: ``ĥ = W_dec · z′ + b_dec``.

*Zero-shot classifier.* The reconstruction error ``MSE(ĥ, h)`` (mean over the prompt's tokens
and channels) is large only when features of ``F`` fired, i.e. when the prompt holds the concept.
The threshold is ``(1 − threshold_margin)`` times the smallest error over the concept's own prompts
(computed with ``calibration_strength``: −6 in the authors' style script, −8 otherwise). A prompt
at or above it has its layer output replaced by ``ĥ`` (the rest of the text encoder runs on it);
any other prompt passes through unchanged. Only the prompts are filtered, not the negative /
unconditional texts (the authors feed ``prompt_embeds`` and let the pipeline encode the negative
prompt with the plain encoder).

The SAE comes from ``sae`` (a folder of ``eval-learn sae train --site text``) or is trained at
apply time on ``train_prompts`` (on the toy model: the world's caption corpus) and cached through
the project's SAE cache (``<output_dir>/_sae``; concept-independent, so erasing another concept
reuses it, which is the paper's "expandable" claim).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from pydantic import Field

from .._torch import no_grad
from ..components import Params, Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..models import text
from ..sae.capture import edited_text_layer, text_activations, text_layer
from ._guided import guided
from .base import Technique

if TYPE_CHECKING:
    import torch

    from ..sae.model import TopKSAE

log = logging.getLogger(__name__)


def default_layer(n_layers: int) -> int:
    """Two thirds of the depth: layer 8 of SD 1.x's 12 (the paper's), 2 of the toy model's 3."""
    return (2 * n_layers) // 3


def token_lengths(ids: torch.Tensor, eos_id: int) -> torch.Tensor:
    """Tokens of each prompt up to and including its first end token (the whole row if none)."""
    import torch

    is_eos = ids == eos_id
    first_eos = torch.where(is_eos.any(1), is_eos.int().argmax(1), torch.full_like(ids[:, 0], ids.shape[1] - 1))
    return first_eos + 1


def deactivate(sae: TopKSAE, h: torch.Tensor, features: torch.Tensor, strength: float) -> torch.Tensor:
    """The SAE reconstruction of ``h`` [B, T, d] with the activations of ``features`` multiplied by
    ``strength`` on every token but the first (the start token)."""
    z = sae.encode(h.to(sae.b_dec.dtype))
    if len(features):
        z[:, 1:, features] = z[:, 1:, features] * strength
    return sae.decode(z)


def prompt_mse(recon: torch.Tensor, h: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Per prompt, the mean squared error over its own tokens (``lengths``) and all channels."""
    import torch

    err = (recon.float() - h.float()).pow(2).mean(-1)  # [B, T]
    mask = torch.arange(h.shape[1], device=h.device)[None] < lengths.to(h.device)[:, None]
    return (err * mask).sum(1) / mask.sum(1)


def top_features(sae: TopKSAE, h: torch.Tensor, length: int, n: int) -> set[int]:
    """The ``n`` features with the largest activation over one prompt's tokens after the start
    token (``h`` [T, d]); only features that fire."""
    z = sae.encode(h[1:length].to(sae.b_dec.dtype))
    best = z.max(0).values
    vals, idx = best.topk(min(n, best.numel()))
    return {int(i) for v, i in zip(vals.tolist(), idx.tolist(), strict=True) if v > 0}


class ItDPipeline:
    """Stable Diffusion whose text-encoder layer output is passed through the ItD filter while
    the prompts (not the negatives) are encoded; mixed into ``StableDiffusionPipeline`` on use."""

    itd_layer: int = 0
    itd_sae: TopKSAE | None = None
    itd_features: torch.Tensor | None = None
    itd_strength: float = -8.0
    itd_threshold: float = float("inf")

    @no_grad
    def itd_filter(self, h: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        import torch

        recon = deactivate(self.itd_sae, h, self.itd_features.to(h.device), self.itd_strength)
        mse = prompt_mse(recon, h, token_lengths(ids.to(h.device), self.tokenizer.eos_token_id))
        hit = (mse >= self.itd_threshold)[:, None, None]
        return torch.where(hit, recon.to(h.dtype), h)

    def encode_prompt(self, *args, **kwargs):
        def edit(h, call, ids):  # prompts first, then negatives (diffusers' order): filter prompts only
            return self.itd_filter(h, ids) if call == 0 else None

        with edited_text_layer(self.text_encoder, self.itd_layer, edit):
            return super().encode_prompt(*args, **kwargs)

class ItD(Technique):
    description = "ItD: deactivate a concept's SAE features in a text-encoder layer for prompts its SAE flags."
    paper = "Tian et al., arXiv:2503.09446 (2025)"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: folder of a trained SAE (``eval-learn sae train --site text``); none = train one now
        sae: str | None = None
        #: text-encoder layer whose output the SAE reads; none = two thirds of the depth (8 on SD 1.x)
        layer: int | None = None
        #: prompts of the concept (feature selection and threshold); default: the concept's target prompts
        prompts: tuple[str, ...] | None = None
        #: prompts that must keep their features; default: the concept's retain prompts
        retain_prompts: tuple[str, ...] | None = None
        #: features taken per prompt; none = 256 for styles, 128 otherwise (the authors' scripts)
        top_features: int | None = Field(None, ge=1)
        #: multiplier of the concept's feature activations at inference
        strength: float = -8.0
        #: multiplier used to calibrate the threshold; none = -6 for styles, else ``strength``
        calibration_strength: float | None = None
        #: threshold = (1 - margin) x the smallest error over the concept's prompts
        threshold_margin: float = Field(0.01, ge=0, lt=1)
        #: prompt file for training the SAE when ``sae`` is not set (toy model: its caption corpus)
        train_prompts: str | None = None
        train_num_prompts: int = Field(40000, ge=1)
        train_steps: int = Field(6000, ge=1)
        #: activation rows per step (50 prompts x 77 tokens)
        train_batch_size: int = Field(3850, ge=1)
        train_latents: int = Field(524288, ge=1)
        k: int = Field(64, ge=1)
        lr: float = Field(1e-4, gt=0)

    def settings(self, ctx: RunContext) -> tuple[int, float]:
        """(features per prompt, calibration strength) as the authors' scripts set them by kind."""
        p, style = self.params, ctx.concept.kind == "style"
        n = p.top_features or (256 if style else 128)
        cal = p.calibration_strength if p.calibration_strength is not None else (-6.0 if style else p.strength)
        return n, cal

    def load_sae(self, pipe, ctx: RunContext, layer: int) -> TopKSAE:
        p = self.params
        if p.sae:
            from ..sae.model import TopKSAE

            sae = TopKSAE.load(p.sae)
        else:
            from ..sae.cached import ensure_sae

            sae, _ = ensure_sae(ctx, self, f"text_encoder.text_model.encoder.layers.{layer}",
                                lambda: train_itd_sae(pipe, ctx, layer, p))
        width = pipe.text_encoder.config.hidden_size
        if sae.d_in != width:
            raise UserError(f"technique 'itd': the SAE has d_in={sae.d_in} but the text encoder's width is {width}")
        return sae

    def prompt_sets(self, ctx: RunContext) -> tuple[list[str], list[str]]:
        p, c = self.params, ctx.concept
        target = list(p.prompts) if p.prompts is not None else list(c.target_prompts)
        retain = list(p.retain_prompts) if p.retain_prompts is not None else list(c.retain_prompts)
        if not target:
            raise UserError("technique 'itd': no prompts of the concept (set technique.params.prompts)")
        if not retain:
            raise UserError("technique 'itd': feature selection contrasts the concept with retain prompts; set "
                            "concept.retain or technique.params.retain_prompts")
        return target, retain

    @no_grad
    def interpret(self, pipe, ctx: RunContext, sae: TopKSAE, layer: int):
        """(features to deactivate, threshold) from the concept's and the retain prompts."""
        import torch

        n, cal = self.settings(ctx)
        target, retain = self.prompt_sets(ctx)
        device = pipe.text_encoder.device
        eos = pipe.tokenizer.eos_token_id

        def acts(prompts):
            h = text_activations(pipe, prompts, layer).to(device)
            return h, token_lengths(text.token_ids(pipe, prompts), eos)

        h_r, len_r = acts(retain)
        kept = set().union(*(top_features(sae, h_r[i], int(len_r[i]), n) for i in range(len(retain))))
        h_t, len_t = acts(target)
        chosen = set().union(*(top_features(sae, h_t[i], int(len_t[i]), n) - kept for i in range(len(target))))
        features = torch.tensor(sorted(chosen), dtype=torch.long)
        if not len(features):
            log.warning("itd: every feature of '%s' is also a top feature of a retain prompt; nothing is erased",
                        ctx.concept.name)
            return features, float("inf")
        errors = prompt_mse(deactivate(sae, h_t, features.to(device), cal), h_t, len_t)
        return features, (1 - self.params.threshold_margin) * float(errors.min())

    def apply(self, pipe, ctx: RunContext):
        p = self.params
        n_layers = len(getattr(pipe.text_encoder, "text_model", pipe.text_encoder).encoder.layers)
        _, layer = text_layer(pipe.text_encoder, p.layer if p.layer is not None else default_layer(n_layers))
        sae = self.load_sae(pipe, ctx, layer).to(pipe.text_encoder.device)
        features, threshold = self.interpret(pipe, ctx, sae, layer)
        return guided(ItDPipeline, pipe, itd_layer=layer, itd_sae=sae, itd_features=features,
                      itd_strength=p.strength, itd_threshold=threshold)


def train_itd_sae(pipe, ctx: RunContext, layer: int, p) -> TopKSAE:
    """The TopK SAE on every token position of the layer's output over the prompt corpus."""
    from ..sae.data import read_prompts
    from ..sae.train import train_sae

    if p.train_prompts:
        prompts = read_prompts(p.train_prompts)[: p.train_num_prompts]
    elif (prompts := ctx.world.corpus(p.train_num_prompts, seed=ctx.seed)) is None:
        raise UserError("technique 'itd': set 'sae' (a trained SAE folder) or 'train_prompts' (a prompt file; "
                        "the authors used celebrity, art-style and COCO prompts) to train one")
    acts = text_activations(pipe, prompts, layer)
    return train_sae(acts.reshape(-1, acts.shape[-1]), n_latents=p.train_latents, k=p.k, steps=p.train_steps,
                     batch_size=p.train_batch_size, lr=p.lr, auxk=256, dead_after=10_000_000, seed=ctx.seed,
                     hookpoint=f"text_encoder.text_model.encoder.layers.{layer}",
                     meta={"model": ctx.config.model, "n_prompts": len(prompts)})
