"""Cross-attention processors shared by techniques that look inside or reshape cross-attention
(MACE's LoRA and attention recorder, CoGFD's additive token bias). They extend diffusers through
``UNet2DConditionModel.set_attn_processor``, using ``Attention``'s own helpers."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


__all__ = ["CrossAttnProcessor", "set_cross_processors"]


class CrossAttnProcessor:
    """Cross-attention with optional LoRA on K/V, a recorder of the attention probabilities and an
    optional additive per-token bias.

    ``token_bias`` (``[batch, tokens]``, set by the caller before each forward) is added to the
    attention logits of every query, in place of the mask the UNet passes: CoGFD's processor
    adds the prompt's 0/1 attention mask this way (real tokens +1, padding 0).
    """

    def __init__(self, lora_k=None, lora_v=None, recorder=None) -> None:

        self.lora_k, self.lora_v, self.recorder = lora_k, lora_v, recorder
        self.token_bias: torch.Tensor | None = None

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kw):
        import torch

        residual = hidden_states
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            b, ch, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, h * w).transpose(1, 2)
        batch = hidden_states.shape[0]
        ctx = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        if attn.norm_cross and encoder_hidden_states is not None:
            ctx = attn.norm_encoder_hidden_states(ctx)
        if self.token_bias is not None:
            attention_mask = self.token_bias.to(hidden_states.dtype)[:, None, :]
        attention_mask = attn.prepare_attention_mask(attention_mask, ctx.shape[1], batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        key, value = attn.to_k(ctx), attn.to_v(ctx)
        if self.lora_k is not None:
            key = key + self.lora_k(ctx)
        if self.lora_v is not None:
            value = value + self.lora_v(ctx)
        query, key, value = attn.head_to_batch_dim(query), attn.head_to_batch_dim(key), attn.head_to_batch_dim(value)
        probs = attn.get_attention_scores(query, key, attention_mask)  # [batch*heads, pixels, tokens]
        if self.recorder is not None:
            self.recorder(probs, batch)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if input_ndim == 4:
            out = out.transpose(-1, -2).reshape(b, ch, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def set_cross_processors(unet, make) -> dict:
    """Install ``make(name)`` on every attn2 (others unchanged); returns the previous processors."""
    before = dict(unet.attn_processors)
    unet.set_attn_processor({name: (make(name) if ".attn2." in name else proc) for name, proc in before.items()})
    return before
