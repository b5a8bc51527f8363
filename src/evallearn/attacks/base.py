"""The attack interface, the prompt cache and text-encoder helpers shared by the attacks.

An attack turns target prompts into adversarial prompts against a given pipeline (the unlearned
one after the technique, the base one for the "before" numbers). :meth:`Attack.run_cached`
stores the result through :class:`evallearn.cache.Cache` as
``<output_dir>/_attacks/<attack>-<key>/prompts.csv`` (columns ``target_prompt``,
``adversarial_prompt``, ``loss``), keyed by the attack's name, ``version`` and parameters, the
targets and their seeds, the :meth:`Attack.inputs` it reads from the run (concept, seed,
sampler, image size) and the identity of the attacked model, so a rerun reuses it and the file
doubles as a precomputed prompt set for other runs.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar

from ..cache import Cache, component_spec, plain
from ..components import Component, Params
from ..models import text
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

    def inputs(self, ctx) -> dict | None:
        """What the attack reads from the run besides its targets and seeds: the concept (MMA's
        banned words), the run seed and the sampler and image size (P4D generates with them)."""
        if ctx is None:
            return None
        s = ctx.config.sampler
        return {"concept": plain(ctx.concept), "seed": ctx.seed, "height": ctx.height, "width": ctx.width,
                "sampler": {"scheduler": s.scheduler, "steps": s.steps, "guidance_scale": s.guidance_scale,
                            "eta": s.eta}}

    def cache_spec(self, targets: list[str], model_key: str, seeds: list[int] | None = None,
                   ctx=None) -> dict:
        return {"kind": "attack", **component_spec(self), "targets": list(targets),
                "seeds": None if seeds is None else list(seeds), "model": model_key, "inputs": self.inputs(ctx)}

    def cache_key(self, targets: list[str], model_key: str, seeds: list[int] | None = None, ctx=None) -> str:
        return Cache.key(self.cache_spec(targets, model_key, seeds, ctx))

    def run_cached(self, pipe, targets: list[str], cache_dir: Path, model_key: str, ctx=None,
                   base_pipe=None, seeds: list[int] | None = None) -> list[str]:
        """The adversarial prompts of ``targets``, from ``cache_dir`` when this exact attack ran."""

        def compute():
            return [(t, adv, loss) for t, (adv, loss) in
                    zip(targets, self.attack(pipe, targets, ctx, base_pipe, seeds), strict=True)]

        rows, _ = Cache(cache_dir).get_or_compute(self.cache_spec(targets, model_key, seeds, ctx), compute,
                                                  save=_save_prompts, load=_load_prompts)
        return [adv for _, adv, _ in rows]


def _save_prompts(rows: list[tuple[str, str, float]], folder: Path) -> None:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["target_prompt", "adversarial_prompt", "loss"])
    for t, adv, loss in rows:
        w.writerow([t, adv, f"{loss:.6g}"])
    atomic_write_bytes(folder / "prompts.csv", buf.getvalue().encode("utf-8"))


def _load_prompts(folder: Path) -> list[tuple[str, str, float]]:
    with (folder / "prompts.csv").open(newline="", encoding="utf-8") as fh:
        return [(r["target_prompt"], r["adversarial_prompt"], float(r["loss"])) for r in csv.DictReader(fh)]


# -- text-encoder helpers -------------------------------------------------------------------


token_ids = text.token_ids


def encode(text_encoder, ids: torch.Tensor, token_embeds: torch.Tensor | None = None):
    """(last hidden state [B, 77, d], pooled EOS state [B, d]) of ``ids``; with ``token_embeds``
    ([B, 77, d]) the token-embedding lookup is replaced by them (so gradients reach them)."""
    out = text.encode(text_encoder, ids, token_embeds)
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
