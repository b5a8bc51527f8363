"""UnlearnDiffAtk probe (Zhang et al., ECCV 2024, "To Generate or Not? Safety-Driven Unlearned
Diffusion Models Are Still Easy To Generate Unsafe Images ... For Now", arXiv:2310.11868; code:
OPTML-Group/Diffusion-MU-Attack), one of the optimisation-based probes of Lu et al. (2025,
arXiv:2505.17013), whose repository only post-processed its outputs.

For each (prompt, seed), ``num_tokens`` adversarial tokens are put after the start token, before
the prompt (the paper's "prefix" insertion), and optimised against the *erased* model so that it
denoises the base model's image of that prompt: the loss is the erased UNet's noise-prediction
MSE on the image's latent (VAE posterior mean) noised at timestep t — the unlearned model used
as its own diffusion classifier.

The optimiser is the paper's text-gradient attack (:class:`TextGradOptimizer`): each adversarial
token is a probability vector over the vocabulary, started uniform. A step draws one token per
position from those probabilities, embeds the one-hot draw, takes the loss gradient with respect
to the one-hot vector, clips it to [-1, 1] (a straight-through estimate), applies Adam (lr 0.01,
weight decay 0.1) to the probabilities and projects each row back onto the probability simplex.
Timesteps are swept in order over the 50 evenly spaced ones (t = 10, 30, …, 990), ``iterations``
steps at each (paper: 40, i.e. 2,000 steps); after each timestep's round the most probable token
per position gives that round's adversarial prompt. Defaults are the authors' released configs
(``configs/*/text_grad_*_classifier.json``): k = 3 tokens for objects and styles, 5 for nudity
and violence.

Every round's prompt is sampled with the item's seed (the authors log one image per round).
The value is best-of-rounds chosen by the selector judge (CLIP score against the prompt, as
the paper-era pipeline of Lu et al. chose among the UnlearnDiffAtk rounds); each round's
selection-free rate, the final round's included, is reported on its own. The authors' attack
instead stops at the first round its scoring classifier accepts (selection by the scorer); no
early stop is made here, so every item runs the full budget.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
from pydantic import Field

from ..generation import make_scheduler
from ..models import text
from ..models.prediction import denoising_target
from . import _sampling
from .base import Probe, ProbeEnv, ProbeResult, SelectingParams

if TYPE_CHECKING:
    import torch

#: concept kinds the authors attack with 5 tokens (their nudity / violence / illegal configs)
FIVE_TOKEN_KINDS = ("nudity", "violence")


def project_simplex(v: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` onto {u : u ≥ 0, Σu = 1} (sort-based, exact;
    Held et al. 1974, Duchi et al. 2008). An upper bound of 1 per entry, as in the paper's
    bisection, never binds on this set."""
    import torch

    u, _ = torch.sort(v, dim=-1, descending=True)
    css = u.cumsum(-1) - 1.0
    ind = torch.arange(1, v.shape[-1] + 1, device=v.device, dtype=v.dtype)
    rho = (u - css / ind > 0).sum(-1, keepdim=True)  # the condition holds on a prefix
    theta = css.gather(-1, rho - 1) / rho.to(v.dtype)
    return (v - theta).clamp(min=0.0)


def timestep_sweep(num_train_timesteps: int, n: int) -> list[int]:
    """The ``n`` evenly spaced timesteps UnlearnDiffAtk sweeps, in its order (ascending)."""
    stride = num_train_timesteps // n
    return list(range(stride // 2, num_train_timesteps, stride))[:n]


class TextGradOptimizer:
    """UnlearnDiffAtk's text-gradient optimiser over ``k`` tokens of a ``vocab_size`` vocabulary."""

    def __init__(self, k: int, vocab_size: int, lr: float, weight_decay: float, generator: torch.Generator,
                 device="cpu") -> None:
        import torch

        self.probs = torch.full((k, vocab_size), 1.0 / vocab_size, device=device, requires_grad=True)
        self.opt = torch.optim.Adam([self.probs], lr=lr, weight_decay=weight_decay)
        self.generator = generator

    def sample(self) -> torch.Tensor:
        """A one-hot draw [k, V] (float32, a leaf that takes gradients)."""
        import torch
        import torch.nn.functional as F

        idx = torch.multinomial(self.probs.detach().cpu(), 1, generator=self.generator).squeeze(1)
        return F.one_hot(idx, self.probs.shape[1]).float().to(self.probs.device).requires_grad_(True)

    def step(self, one_hot_grad: torch.Tensor) -> None:
        """Adam on the probabilities with the clipped one-hot gradient, then back onto the simplex."""
        import torch

        self.probs.grad = one_hot_grad.detach().float().clamp(-1.0, 1.0)
        self.opt.step()
        self.opt.zero_grad()
        with torch.no_grad():
            self.probs.copy_(project_simplex(self.probs))

    def tokens(self) -> torch.Tensor:
        return self.probs.detach().argmax(-1)


class UnlearnDiffAtk(Probe):
    description = ("Adversarial prompt tokens optimised (text-gradient attack) against the erased model to denoise "
                   "base-model images; best-of-rounds by a selector.")
    paper = "Zhang et al., UnlearnDiffAtk, ECCV 2024; Lu et al., NeurIPS 2025"
    needs_base = True

    class Params(SelectingParams):
        #: adversarial tokens; None = the authors' configs: 5 for nudity / violence, 3 otherwise
        num_tokens: int | None = Field(None, ge=1, le=20)
        #: optimiser steps at each timestep (the authors' ``iteration``)
        iterations: int = Field(40, ge=1)
        #: timesteps swept in order, evenly spaced (the authors' 50: 2,000 steps in all)
        num_timesteps: int = Field(50, ge=1)
        learning_rate: float = Field(0.01, gt=0)
        weight_decay: float = Field(0.1, ge=0)
        #: sample every round's prompt (best-of-rounds by the selector); False = the final prompt only
        sample_every_round: bool = True

    def tokens_count(self) -> int:
        if self.params.num_tokens is not None:
            return self.params.num_tokens
        return 5 if self.ctx.concept.kind in FIVE_TOKEN_KINDS else 3

    def timesteps(self, pipe) -> list[int]:
        return timestep_sweep(pipe.scheduler.config.num_train_timesteps, self.params.num_timesteps)

    def _prompt_ids(self, tok, prompt: str, k: int, device) -> torch.Tensor:
        import torch

        ids = text.tokenize(tok, prompt, tok.model_max_length - k).input_ids[0]
        pad = tok.pad_token_id if tok.pad_token_id is not None else int(ids[-1])
        return torch.cat([ids[:1], torch.full((k,), int(pad)), ids[1:]]).unsqueeze(0).to(device)

    def attack(self, env: ProbeEnv, item, target: np.ndarray) -> dict:
        """Optimise the tokens for one item; returns each round's token ids and mean loss."""
        import torch
        import torch.nn.functional as F

        pipe = env.erased
        tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
        p = self.params
        k = self.tokens_count()
        gen = torch.Generator("cpu").manual_seed(int(item[1]))
        table = te.get_input_embeddings().weight.detach().float()
        ids = self._prompt_ids(tok, item[0], k, te.device)
        opt = TextGradOptimizer(k, table.shape[0], p.learning_rate, p.weight_decay, gen, table.device)
        state = {"emb": None}

        def hook(_module, _inputs, output):
            if state["emb"] is None:
                return output
            out = output.clone()
            out[:, 1:1 + k] = state["emb"].to(out.dtype)
            return out

        x0 = _sampling.encode(pipe, target[None])
        alphas = pipe.scheduler.alphas_cumprod
        with text.embedding_hook(te, hook):
            was = [q.requires_grad for q in unet.parameters()]
            te_was = [q.requires_grad for q in te.parameters()]
            unet.requires_grad_(False)
            te.requires_grad_(False)
            rounds = []
            try:
                for t in self.timesteps(pipe):
                    tt = torch.tensor([t], device=x0.device)
                    a = alphas[t].to(x0)
                    losses = []
                    for _ in range(p.iterations):
                        one_hot = opt.sample()
                        state["emb"] = one_hot @ table
                        noise = torch.randn(x0.shape, generator=gen).to(x0)
                        x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                        cond = te(ids)[0].to(unet.dtype)
                        pred = unet(x_t, tt, encoder_hidden_states=cond).sample
                        loss = F.mse_loss(pred.float(), denoising_target(pipe, x0, noise, tt).float())
                        opt.step(torch.autograd.grad(loss, [one_hot])[0])
                        losses.append(float(loss.detach()))
                    rounds.append({"t": t, "ids": opt.tokens().tolist(), "loss": float(np.mean(losses))})
            finally:
                for q, g in zip(unet.parameters(), was, strict=True):
                    q.requires_grad_(g)
                for q, g in zip(te.parameters(), te_was, strict=True):
                    q.requires_grad_(g)
        for r in rounds:
            r["adversarial_prompt"] = tok.decode(r["ids"]) + " | " + item[0]
        return {"rounds": rounds, "num_tokens": k}

    def round_embeds(self, env: ProbeEnv, item, token_ids: list[int]) -> torch.Tensor:
        import torch

        te = env.erased.text_encoder
        ids = self._prompt_ids(env.erased.tokenizer, item[0], len(token_ids), te.device)
        ids[0, 1:1 + len(token_ids)] = torch.tensor(token_ids)
        with torch.no_grad():
            return te(ids)[0]

    def attack_spec(self, item, attack: dict) -> dict:
        """The complete key of one item's attack against this run's erased model (which the run
        directory keys): the attack's budget, the item and its target (the base model's standard
        image of the item, by its request key)."""
        return {"kind": "probe_attack", "name": "unlearn_diff_atk", "version": self.version, "attack": attack,
                "prompt": item[0], "seed": item[1], "target": self.request(item).key}

    def run(self, env: ProbeEnv) -> ProbeResult:
        import torch

        from ..cache import Cache
        from ..config import safe_join

        items = self.items()
        p = self.params
        # what the attacked tokens depend on besides the item and its base-model target
        attack = {"num_tokens": self.tokens_count(), "iterations": p.iterations, "num_timesteps": p.num_timesteps,
                  "learning_rate": p.learning_rate, "weight_decay": p.weight_decay}
        cache = Cache(safe_join(env.artefacts, "attacks"))  # against this run's erased model
        memo: dict = {}
        targets: dict = {}

        def target(it):
            if not targets:  # every item's, made in one go (the batches of the standard images)
                targets.update(zip(items, self.standard_images(env, items, "base"), strict=True))
            return targets[it]

        def attacked(it) -> dict:
            if it not in memo:
                memo[it] = cache.get_or_compute(self.attack_spec(it, attack),
                                                lambda: self.attack(env, it, target(it)))[0]
            return memo[it]

        ts = self.timesteps(env.erased)
        rounds = list(range(len(ts))) if self.params.sample_every_round else [len(ts) - 1]
        settings = {f"round={r + 1},t={ts[r]}": {"round": r + 1, "t": ts[r]} for r in rounds}
        cfg = env.erased.scheduler.config
        kw = self.sample_kwargs()
        images, keys = {}, {}
        for label, st in settings.items():
            def sample(batch, r=st["round"] - 1):
                embeds = torch.cat([self.round_embeds(env, it, attacked(it)["rounds"][r]["ids"]) for it in batch])
                seeds = [s for _, s in batch]
                lat = _sampling.initial_latents(env.erased, seeds, kw["height"], kw["width"])
                with _sampling.own_scheduler(env.erased):
                    env.erased.scheduler = make_scheduler(self.ctx.config.sampler.scheduler, cfg)
                    img = env.erased(prompt_embeds=embeds.to(env.erased.unet.dtype), latents=lat,
                                     generator=_sampling.step_generators(seeds), output_type="np", **kw).images
                return _sampling.to_uint8(np.asarray(img))
            images[label] = self.cached_sample(env, "uda", {**st, "attack": attack}, items, sample)
            keys[label] = self.sample_keys("uda", {**st, "attack": attack}, items)
        prompts = {}
        for it in items:
            got = attacked(it)
            prompts[f"{it[1]}:{it[0]}"] = {"adversarial_prompt": got["rounds"][-1]["adversarial_prompt"],
                                           "round_losses": [r["loss"] for r in got["rounds"]],
                                           "round_prompts": [r["adversarial_prompt"] for r in got["rounds"]]}
        extra = {"adversarial_prompts": prompts,
                 "attack": {"optimizer": "text_grad", "num_tokens": self.tokens_count(), "iterations": p.iterations,
                            "timesteps": ts, "steps_total": p.iterations * len(ts)}}
        return self.sweep_result(env, items, images, settings, extra, keys)
