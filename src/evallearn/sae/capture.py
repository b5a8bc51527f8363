"""Activation capture with forward hooks: what the SAEs are trained on and read from.

* :func:`text_activations` — a text-encoder layer's output for every token position of each
  prompt (Concept Steerers: ``text_encoder.text_model.encoder.layers.9`` on SD 1.x).
* :func:`unet_activations` — a UNet block's output (e.g. the cross-attention transformer block
  ``up_blocks.1.attentions.1`` on SD 1.x, SAeUron's), at every denoising step of a normal
  classifier-free-guided generation, conditional half only, as ``[prompts, steps, H·W, C]``.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

from .._torch import no_grad
from ..models import text
from ..models.sampling import seed_generators

if TYPE_CHECKING:
    import torch


def first(output):
    """The tensor of a module's output (tuples and diffusers/transformers output objects)."""
    import torch

    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, tuple | list):
        return output[0]
    if hasattr(output, "sample"):
        return output.sample
    return output[0]


def replace_first(output, value: torch.Tensor):
    import torch

    if isinstance(output, torch.Tensor):
        return value
    if isinstance(output, tuple):
        return (value, *output[1:])
    if isinstance(output, list):
        return [value, *output[1:]]
    if hasattr(output, "sample"):
        output.sample = value
        return output
    output[0] = value
    return output


def text_layer(text_encoder, layer: int | None):
    """The encoder layer module; ``None`` = the third from last (layer 9 of SD 1.x's 12)."""
    layers = getattr(text_encoder, "text_model", text_encoder).encoder.layers  # transformers 4 / 5
    index = len(layers) - 3 if layer is None else layer
    if not -len(layers) <= index < len(layers):
        from ..errors import UserError

        raise UserError(f"sae: the text encoder has {len(layers)} layers; layer {index} does not exist")
    return layers[index], index % len(layers)


@contextmanager
def edited_text_layer(text_encoder, layer: int | None, edit):
    """While active, the output of the text encoder's ``layer`` is ``edit(hidden, call, input_ids)``
    (``None`` keeps it). ``call`` counts the encoder's forward passes from 0: diffusers' pipelines
    encode the prompts first (0), then the negative prompts (1); ``input_ids`` are that pass's."""
    module, _ = text_layer(text_encoder, layer)
    state: dict = {"call": -1, "ids": None}

    def grab_ids(m, args, kwargs):
        state["call"] += 1
        state["ids"] = args[0] if args else kwargs.get("input_ids")

    def hook(m, inputs, output):
        new = edit(first(output), state["call"], state["ids"])
        return None if new is None else replace_first(output, new)

    handles = [text_encoder.register_forward_pre_hook(grab_ids, with_kwargs=True), module.register_forward_hook(hook)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def unet_module(unet, hookpoint: str):
    from ..errors import UserError

    name = hookpoint.removeprefix("unet.")
    try:
        return unet.get_submodule(name)
    except AttributeError:
        raise UserError(f"sae: the UNet has no module '{name}'") from None


@contextmanager
def hooked(module, hook):
    handle = module.register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


@no_grad
def text_activations(pipe, prompts: Sequence[str], layer: int | None = None, batch_size: int = 64) -> torch.Tensor:
    """Layer outputs [len(prompts), 77, d] (every position, padding included, as the UNet sees 77)."""
    import torch

    module, _ = text_layer(pipe.text_encoder, layer)
    out: list[torch.Tensor] = []
    tok = pipe.tokenizer
    with hooked(module, lambda m, i, o: out.append(first(o).detach().float().cpu())):
        for s in range(0, len(prompts), batch_size):
            ids = text.tokenize(tok, prompts[s : s + batch_size]).input_ids
            pipe.text_encoder(ids.to(pipe.text_encoder.device))
    return torch.cat(out)


@no_grad
def unet_activations(pipe, prompts: Sequence[str], hookpoint: str, steps: int, guidance_scale: float,
                     seeds: Sequence[int], height: int | None = None, width: int | None = None,
                     batch_size: int = 32) -> torch.Tensor:
    """Conditional-half block outputs [len(prompts), steps, H·W, C] of CFG generations."""
    import torch

    module = unet_module(pipe.unet, hookpoint)
    result = []
    for s in range(0, len(prompts), batch_size):
        chunk = list(prompts[s : s + batch_size])
        per_step: list[torch.Tensor] = []

        def hook(m, i, o, per_step=per_step):
            h = first(o).detach().float()
            h = h.chunk(2)[1] if guidance_scale > 1.0 else h
            per_step.append(h.flatten(2).transpose(1, 2).cpu())  # [B, HW, C]

        gens = seed_generators(seeds[s : s + batch_size])
        with hooked(module, hook):
            pipe(prompt=chunk, negative_prompt=[""] * len(chunk), num_inference_steps=steps,
                 guidance_scale=guidance_scale, generator=gens, output_type="latent", height=height, width=width)
        result.append(torch.stack(per_step, dim=1))
    return torch.cat(result)
