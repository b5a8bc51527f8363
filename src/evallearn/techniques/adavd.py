"""AdaVD — Adaptive Value Decomposer (Wang, Li, Mu, Hao, Liu, Wang & He, CVPR 2025, "Precise,
Fast, and Low-cost Concept Erasure in Value Space: Orthogonal Complement Matters",
arXiv:2412.06143; code: WYuan1001/AdaVD).

Training-free; no weight changes. In every cross-attention layer of the UNet the value vectors of
the prompt's tokens are replaced by their component orthogonal to the erased concept's value:

1. **Target values.** The concept text is encoded and every position after the start token is
   filled with the embedding of its *last* word token (the one before the end-of-text token), so
   position ``l`` of the target holds that token's embedding for all ``l ≥ 1``. Its value in a
   layer is ``t = W_v · target``; as in the authors' batched code, the target's unconditional half
   (the empty text's value) is joined to it, and the prompt's unconditional and conditional values
   are joined the same way: per token position ``l`` the vectors are ``t_l = [v_∅,l ; t_l]`` and
   ``p_l = [u_l ; c_l]`` (all heads, both halves).
2. **Orthogonal complement with an adaptive shift.** Per token position

       w_l = s(cos(t_l, p_l)) · ⟨t_l, p_l⟩ / ‖t_l‖²,     s(x) = c / (1 + exp(−a (x − b)))
       p_l ← p_l − w_l · t_l

   with ``w_0 = 0`` (the start token is kept). Without the shift (``token_sim: false``) ``s ≡ 1``
   and ``p_l`` is exactly projected onto the orthogonal complement of ``t_l``. The erased values
   replace the prompt's in both halves of classifier-free guidance.
3. Applied in every cross-attention layer at every denoising step whose timestep is above
   ``decomp_timestep`` (0: all steps).

Defaults are the authors' demo settings (``token_sim`` on, a = 100, b = 0.93, c = 2,
``decomp_timestep`` 0). Only a single target concept (the run's concept name, or ``target``) is
erased; the authors' multi-concept Gram–Schmidt variant is not implemented. Each sample is paired
with its own unconditional row, so batching does not change an image.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import Field

from ..components import Params, Supports, kinds
from ..context import RunContext
from ._attention import CrossAttnProcessor, set_cross_processors
from ._guided import Guidance, guided
from .base import Technique

if TYPE_CHECKING:
    import torch


def shift(cos: torch.Tensor, a: float, b: float, c: float) -> torch.Tensor:
    """The adaptive shift ``c / (1 + exp(−a (cos − b)))``."""
    import torch

    return c / (1.0 + torch.exp(-a * (cos - b)))


def erased_component(target: torch.Tensor, prompt: torch.Tensor, sigmoid: tuple[float, float, float] | None
                     ) -> torch.Tensor:
    """``w_l · t_l`` per token position for ``target`` [L, D] and ``prompt`` [..., L, D]
    (``sigmoid`` None: plain projection); position 0 gets weight 0."""
    import torch

    dot = (target * prompt).sum(-1)
    weight = torch.nan_to_num(dot / (target * target).sum(-1), nan=0.0)
    if sigmoid is not None:
        weight = weight * shift(torch.cosine_similarity(target.expand_as(prompt), prompt, dim=-1), *sigmoid)
    weight[..., 0] = 0.0
    return weight.unsqueeze(-1) * target


class _ValueEraser:
    """The per-layer value change ``−w·t`` added to ``to_v(ctx)`` (CrossAttnProcessor's ``lora_v`` hook).

    ``ctx`` is ``[uncond × B ; cond × B]``; row ``i`` is joined with row ``B + i``."""

    def __init__(self, to_v, target_pair: torch.Tensor, sigmoid) -> None:
        self.to_v, self.target_pair, self.sigmoid = to_v, target_pair, sigmoid
        self._target: torch.Tensor | None = None

    def __call__(self, ctx: torch.Tensor) -> torch.Tensor:
        import torch

        if self._target is None:
            tv = self.to_v(self.target_pair.to(ctx.dtype))  # [2, L, D]
            self._target = torch.cat([tv[0], tv[1]], dim=-1)
        value = self.to_v(ctx)
        half = value.shape[0] // 2
        joined = torch.cat([value[:half], value[half:]], dim=-1)  # [B, L, 2D]
        era = erased_component(self._target, joined, self.sigmoid)
        d = value.shape[-1]
        return -torch.cat([era[..., :d], era[..., d:]], dim=0)


class AdaVDPipeline(Guidance):
    """Stable Diffusion with AdaVD's value-space erasure in every cross-attention layer."""

    target_text: str = ""
    sigmoid: tuple[float, float, float] | None = (100.0, 0.93, 2.0)
    decomp_timestep: int = 0

    def target_embedding(self) -> torch.Tensor:
        """The target text's encoding with positions 1.. filled by its last word token [1, L, d]."""
        tok = self.tokenizer
        ids = tok([self.target_text], padding="max_length", max_length=tok.model_max_length, truncation=True,
                  return_tensors="pt").input_ids[0]
        eot = int((ids == tok.eos_token_id).nonzero()[0, 0])
        emb = self.embed_texts([self.target_text])
        spread = emb.clone()
        spread[:, 1:] = emb[:, eot - 1 : eot]
        return spread

    def setup_guidance(self, prompts, negative_prompts, cond, uncond, guidance_scale):
        import torch

        pair = torch.cat([self.embed_texts([""]), self.target_embedding()]).to(cond.dtype)
        return {"pair": pair}

    def guided_noise(self, i, t, latents, cond, uncond, guidance_scale, state):
        if int(t) <= self.decomp_timestep:
            return super().guided_noise(i, t, latents, cond, uncond, guidance_scale, state)
        unet = self.unet

        def make(name):
            attn = unet.get_submodule(name.removesuffix(".processor"))
            return CrossAttnProcessor(lora_v=_ValueEraser(attn.to_v, state["pair"], self.sigmoid))

        before = set_cross_processors(unet, make)
        try:
            return super().guided_noise(i, t, latents, cond, uncond, guidance_scale, state)
        finally:
            unet.set_attn_processor(before)


class AdaVD(Technique):
    description = "AdaVD: cross-attention values projected onto the orthogonal complement of the concept's value."
    paper = "Wang et al., CVPR 2025 (arXiv:2412.06143)"
    version = "1"
    supports = Supports(model_tags=kinds("sd1", "sd2"))

    class Params(Params):
        #: the text whose value is erased; default: the run's concept name
        target: str | None = None
        #: the adaptive shift s(cos) on the projection weight; false: plain orthogonal projection
        token_sim: bool = True
        #: a (p in the paper): steepness of the shift
        sigmoid_a: float = 100.0
        #: b (ε in the paper): the cosine similarity at which the shift is half its maximum
        sigmoid_b: float = 0.93
        #: c (s in the paper): the shift's maximum
        sigmoid_c: float = 2.0
        #: the erasure runs at steps whose timestep is above this (0: all steps)
        decomp_timestep: int = Field(0, ge=0)

    def settings(self, ctx: RunContext) -> dict:
        p = self.params
        return {"target_text": p.target if p.target is not None else ctx.concept.name,
                "sigmoid": (p.sigmoid_a, p.sigmoid_b, p.sigmoid_c) if p.token_sim else None,
                "decomp_timestep": p.decomp_timestep}

    def apply(self, pipe, ctx: RunContext):
        return guided(AdaVDPipeline, pipe, **self.settings(ctx))
