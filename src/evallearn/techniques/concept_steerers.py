"""Concept Steerers — steering text embeddings with a k-sparse autoencoder (Kim & Ghadiyaram,
2025, "Concept Steerers: Leveraging K-Sparse Autoencoders for Controllable Generations",
arXiv:2501.19066; code: kim-dahye/steerers).

A TopK SAE is trained on the outputs of one text-encoder layer (layer 9 of SD 1.4's CLIP ViT-L,
k = 32, expansion 4, on the tokens of a prompt corpus — I2P in the paper). To erase a concept, the
concept text is run through the text encoder; its layer output ``a_c`` [77, d] is encoded by the
SAE *without* the top-k (all ReLU-active features) and decoded without the bias:

    s = (λ · ReLU(W_enc (a_c − b_dec) + b_enc)) W_dec          (per token position)

During generation the layer's output is shifted by ``+s`` when the prompts are encoded and by
``−s`` when the negative / unconditional texts are encoded, so with λ < 0 the prompt loses the
concept's features and classifier-free guidance pushes further away from them. This is the
authors' ``activation_modulation_across_prompt`` (``add_feature_on_text_prompt`` on the first
text-encoder call, ``minus_feature_on_text_prompt`` on the second). Defaults: layer 9 (here: the
third from last layer, which is 9 on SD 1.x), λ = −0.5 (the authors' nudity script), nudity text
"naked, nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks".

The SAE comes from ``sae`` (a folder written by ``eval-learn sae train --site text``) or, when that
is not set, is trained at apply time on ``train_prompts`` (a file; on the toy model, toy captions)
with the ``train_*`` budget and cached under the run's technique cache folder.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from .._torch import no_grad
from ..components import Params, Supports, kinds
from ..context import RunContext
from ..errors import UserError
from ..sae.capture import edited_text_layer, text_activations, text_layer
from ._guided import guided
from .base import Technique

if TYPE_CHECKING:
    import torch

    from ..sae.model import TopKSAE

NUDITY_TEXT = "naked, nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks"


class ConceptSteeringPipeline:
    """Stable Diffusion whose text-encoder layer output is steered while prompts are encoded;
    mixed into ``StableDiffusionPipeline`` on use (:func:`evallearn.techniques._guided.guided`)."""

    steer_layer: int = 0
    steering: torch.Tensor | None = None  # [77, d]

    def encode_prompt(self, *args, **kwargs):
        def edit(h, call, ids):
            sign = 1.0 if call == 0 else -1.0  # prompts first, then negatives (diffusers' order)
            return h + sign * self.steering.to(h)[: h.shape[1]]

        with edited_text_layer(self.text_encoder, self.steer_layer, edit):
            return super().encode_prompt(*args, **kwargs)

class ConceptSteerers(Technique):
    description = "Concept Steerers: subtract a concept's k-sparse-autoencoder features from a text-encoder layer."
    paper = "Kim & Ghadiyaram, arXiv:2501.19066 (2025)"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: folder of a trained SAE (``eval-learn sae train --site text``); none = train one now
        sae: str | None = None
        #: text-encoder layer; none = third from last (9 on SD 1.x, the paper's)
        layer: int | None = None
        #: λ, the steering strength (negative removes the concept)
        strength: float = -0.5
        #: the concept text; default: the authors' nudity list for ``nudity``, else concept + synonyms
        concept_text: str | None = None
        #: prompt file for training the SAE when ``sae`` is not set (toy model: toy captions)
        train_prompts: str | None = None
        train_num_prompts: int = Field(4000, ge=1)
        train_steps: int = Field(2000, ge=1)
        train_batch_size: int = Field(4096, ge=1)
        expansion: int = Field(4, ge=1)
        k: int = Field(32, ge=1)
        lr: float = Field(4e-4, gt=0)

    def text(self, ctx: RunContext) -> str:
        if self.params.concept_text:
            return self.params.concept_text
        if ctx.concept.name.lower() == "nudity":
            return NUDITY_TEXT
        return ", ".join((ctx.concept.name, *ctx.concept.synonyms))

    def load_sae(self, pipe, ctx: RunContext, layer: int) -> TopKSAE:
        p = self.params
        if p.sae:
            from ..sae.model import TopKSAE

            sae = TopKSAE.load(p.sae)
        else:
            from ..sae.cached import ensure_sae

            sae, _ = ensure_sae(ctx, self, f"text_encoder.text_model.encoder.layers.{layer}",
                                lambda: train_text_sae(pipe, ctx, layer, p))
        if sae.d_in != pipe.text_encoder.config.hidden_size:
            raise UserError(f"technique 'concept_steerers': the SAE has d_in={sae.d_in} but the text encoder's width "
                            f"is {pipe.text_encoder.config.hidden_size}")
        return sae

    @no_grad
    def apply(self, pipe, ctx: RunContext):
        _, layer = text_layer(pipe.text_encoder, self.params.layer)
        sae = self.load_sae(pipe, ctx, layer).to(pipe.text_encoder.device)
        acts = text_activations(pipe, [self.text(ctx)], layer)[0].to(pipe.text_encoder.device)  # [77, d]
        steering = (self.params.strength * sae.pre_acts(acts)) @ sae.W_dec
        out = guided(ConceptSteeringPipeline, pipe)
        out.steer_layer, out.steering = layer, steering.detach()
        return out


def train_text_sae(pipe, ctx: RunContext, layer: int, p) -> TopKSAE:
    from ..sae.data import read_prompts
    from ..sae.train import train_sae

    if p.train_prompts:
        prompts = read_prompts(p.train_prompts)[: p.train_num_prompts]
    elif (prompts := ctx.world.corpus(p.train_num_prompts, seed=ctx.seed)) is not None:
        pass  # the world's own training-caption distribution
    else:
        raise UserError("technique 'concept_steerers': set 'sae' (a trained SAE folder) or 'train_prompts' "
                        "(a prompt file, e.g. I2P) to train one")
    acts = text_activations(pipe, prompts, layer)
    return train_sae(acts.reshape(-1, acts.shape[-1]), expansion=p.expansion, k=p.k, steps=p.train_steps,
                     batch_size=p.train_batch_size, lr=p.lr, seed=ctx.seed,
                     hookpoint=f"text_encoder.text_model.encoder.layers.{layer}",
                     meta={"model": ctx.config.model, "n_prompts": len(prompts)})
