"""Text-encoder helpers shared by techniques, attacks, probes and SAEs.

Stable Diffusion conditions on the last hidden states of a CLIP text encoder run on prompts
padded to the tokenizer's ``model_max_length`` (77 for CLIP). :func:`tokenize` and
:func:`token_ids` do that padding; :func:`encode` runs the encoder, optionally with the output of
the token-embedding layer replaced (:func:`embedding_hook`), so that gradients reach given word
embeddings while positional embeddings, the causal mask and the final layer norm stay the
model's own, whatever the transformers version.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def tokenize(tokenizer, texts: str | Sequence[str], max_length: int | None = None):
    """The tokenizer's batch for ``texts``, padded (and truncated) to ``max_length`` (default:
    the tokenizer's ``model_max_length``), as PyTorch tensors."""
    if not isinstance(texts, str):
        texts = list(texts)
    return tokenizer(texts, padding="max_length", max_length=max_length or tokenizer.model_max_length,
                     truncation=True, return_tensors="pt")


def token_ids(pipe, texts: Sequence[str]) -> torch.Tensor:
    """Padded token ids ``[N, 77]`` of ``texts`` on the pipeline's text-encoder device."""
    return tokenize(pipe.tokenizer, texts).input_ids.to(pipe.text_encoder.device)


@contextmanager
def embedding_hook(text_encoder, hook: Callable) -> Iterator[None]:
    """Install ``hook(module, inputs, output)`` as a forward hook on the token-embedding layer of
    ``text_encoder`` for the duration of the block (a returned tensor replaces the layer's output)."""
    handle = text_encoder.get_input_embeddings().register_forward_hook(hook)
    try:
        yield
    finally:
        handle.remove()


def encode(text_encoder, ids: torch.Tensor, token_embeds: torch.Tensor | None = None):
    """The text encoder's output on ``ids`` (``[0]``: last hidden states ``[N, 77, d]``, ``[1]``:
    pooled end-token states); with ``token_embeds`` (``[N, 77, d]``) the token-embedding lookup
    is replaced by them, and ``ids`` only locate the end token."""
    if token_embeds is None:
        return text_encoder(ids)
    with embedding_hook(text_encoder, lambda _m, _i, o: token_embeds.to(o.dtype)):
        return text_encoder(ids)


def encode_prompts(pipe, prompts: Sequence[str], text_encoder=None, grad: bool = False) -> torch.Tensor:
    """Last hidden states ``[N, 77, d]`` of ``prompts`` (SD's conditioning), by ``text_encoder``
    (default: the pipeline's), without gradients unless ``grad``."""
    import torch

    enc = text_encoder or pipe.text_encoder
    with nullcontext() if grad else torch.no_grad():
        return enc(token_ids(pipe, prompts))[0]


def encode_embeds(text_encoder, input_ids: torch.Tensor, inputs_embeds: torch.Tensor) -> torch.Tensor:
    """Last hidden states of ``text_encoder`` run on word embeddings ``inputs_embeds`` ``[N, 77, d]``
    (gradients flow to them); ``input_ids`` only locate the end token."""
    return encode(text_encoder, input_ids.to(inputs_embeds.device), inputs_embeds)[0]


def word_embeddings(text_encoder) -> torch.nn.Embedding:
    """The token-embedding layer of ``text_encoder``."""
    return text_encoder.get_input_embeddings()


def prompt_length(pipe, prompt: str) -> int:
    """Number of word tokens of ``prompt`` (without start / end tokens)."""
    return len(pipe.tokenizer(prompt, add_special_tokens=False).input_ids)
