"""The attack interface, the prompt cache and text-encoder helpers shared by the attacks.

An attack turns target prompts into adversarial prompts against a given pipeline (the unlearned
one after the technique, the base one for the "before" numbers). :meth:`Attack.run_cached`
stores the result as ``<output_dir>/_attacks/<attack>-<hash>.csv`` (columns ``target_prompt``,
``adversarial_prompt``, ``loss``), keyed by the attack, its parameters, the targets and the
identity of the attacked model, so a rerun reuses it and the file doubles as a precomputed
prompt set for other runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..components import Component, Params
from ..config import short_hash
from ..store import atomic_write_bytes

if TYPE_CHECKING:
    import torch


class Attack(Component):
    Params: ClassVar[type[Params]] = Params
    #: True if the attack needs the base model besides the attacked one (P4D)
    needs_base: ClassVar[bool] = False
    #: True if the attack's objective reads the attacked pipeline's UNet noise prediction
    #: directly (P4D): it then cannot see an inference-time technique, which acts in the
    #: sampling loop, not in the UNet's weights
    reads_unet: ClassVar[bool] = False

    def __init__(self, params: Params | None = None) -> None:
        self.params = params if params is not None else self.Params()

    def attack(self, pipe, targets: list[str], ctx=None, base_pipe=None,
               seeds: list[int] | None = None) -> list[tuple[str, float]]:
        """One (adversarial prompt, final loss) per target prompt; ``seeds`` are the targets'
        evaluation seeds (used by attacks that judge their candidates by generating, as P4D)."""
        raise NotImplementedError

    def cache_key(self, targets: list[str], model_key: str, seeds: list[int] | None = None) -> str:
        spec = {"attack": self.name, "params": self.params.model_dump(mode="json"), "targets": list(targets),
                "model": model_key}
        if seeds is not None:
            spec["seeds"] = list(seeds)
        return short_hash(spec)

    def run_cached(self, pipe, targets: list[str], cache_dir: Path, model_key: str, ctx=None,
                   base_pipe=None, seeds: list[int] | None = None) -> list[str]:
        path = Path(cache_dir) / f"{self.name}-{self.cache_key(targets, model_key, seeds)}.csv"
        if path.is_file():
            rows = list(csv.DictReader(path.open(newline="", encoding="utf-8")))
            if [r["target_prompt"] for r in rows] == list(targets):
                return [r["adversarial_prompt"] for r in rows]
        found = self.attack(pipe, targets, ctx, base_pipe, seeds)
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["target_prompt", "adversarial_prompt", "loss"])
        for t, (adv, loss) in zip(targets, found, strict=True):
            w.writerow([t, adv, f"{loss:.6g}"])
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(path, buf.getvalue().encode("utf-8"))
        return [adv for adv, _ in found]


# -- text-encoder helpers -------------------------------------------------------------------


def token_ids(pipe, texts: list[str]) -> torch.Tensor:
    tok = pipe.tokenizer
    return tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True,
               return_tensors="pt").input_ids.to(pipe.text_encoder.device)


def encode(text_encoder, ids: torch.Tensor, token_embeds: torch.Tensor | None = None):
    """(last hidden state [B, 77, d], pooled EOS state [B, d]) of ``ids``; with ``token_embeds``
    ([B, 77, d]) the token-embedding lookup is replaced by them (so gradients reach them)."""
    handle = None
    if token_embeds is not None:
        handle = text_encoder.get_input_embeddings().register_forward_hook(lambda m, i, o: token_embeds.to(o.dtype))
    try:
        out = text_encoder(ids)
    finally:
        if handle is not None:
            handle.remove()
    return out[0], out[1]


def vocabulary_ids(tokenizer, words: tuple[str, ...] = ()) -> torch.Tensor:
    """Token ids an attack may use: every ordinary token, or those making up ``words``."""
    import torch

    special = {tokenizer.bos_token_id, tokenizer.eos_token_id, tokenizer.pad_token_id}
    if words:
        ids = sorted({i for w in words for i in tokenizer(w, add_special_tokens=False).input_ids} - special)
    else:
        ids = [i for i in range(len(tokenizer)) if i not in special]
    return torch.tensor(ids, dtype=torch.long)


def banned_ids(tokenizer, words: tuple[str, ...]) -> set[int]:
    """Ids of every vocabulary entry containing one of ``words`` (MMA-Diffusion's filter)."""
    words = tuple(w.lower() for w in words if w)
    return {i for t, i in tokenizer.get_vocab().items() if any(w in t.lower().replace("</w>", "") for w in words)}


def wrap(tokenizer, body: torch.Tensor) -> torch.Tensor:
    """[B, n] token ids -> [B, 77]: BOS, the ids, EOS, EOS padding."""
    import torch

    b, n = body.shape
    length = tokenizer.model_max_length
    out = torch.full((b, length), tokenizer.eos_token_id if tokenizer.pad_token_id is None else tokenizer.pad_token_id,
                     dtype=torch.long)
    out[:, 0] = tokenizer.bos_token_id
    out[:, 1 : n + 1] = body
    out[:, n + 1] = tokenizer.eos_token_id
    return out


def decode(tokenizer, body: torch.Tensor) -> str:
    return tokenizer.decode(body.tolist(), skip_special_tokens=True).strip()
