"""The real CLIP BPE tokenizer, built offline from files shipped with the package.

``assets/clip_tokenizer`` holds ``vocab.json`` and ``merges.txt`` converted from OpenAI's
``bpe_simple_vocab_16e6.txt.gz`` (MIT licence; see ``scripts/build_clip_vocab.py``), so the
ids are the ones Stable Diffusion's tokenizer produces ("a photo of a cat" ->
``[49406, 320, 1125, 539, 320, 2368, 49407]``).
"""

from __future__ import annotations

from functools import cache
from importlib import resources
from pathlib import Path

CLIP_MAX_LENGTH = 77


def clip_tokenizer_dir() -> Path:
    return Path(str(resources.files("evallearn") / "assets" / "clip_tokenizer"))


@cache
def _load(max_length: int):
    from transformers import CLIPTokenizer

    return CLIPTokenizer.from_pretrained(str(clip_tokenizer_dir()), model_max_length=max_length)


def load_clip_tokenizer(max_length: int = CLIP_MAX_LENGTH):
    """Return a ``CLIPTokenizer`` with the real CLIP vocabulary (a fresh copy each call)."""
    import copy

    return copy.deepcopy(_load(max_length))
