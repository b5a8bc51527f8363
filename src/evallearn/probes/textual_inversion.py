"""Textual-inversion probe of Lu et al. (2025, "When Are Concepts Erased From Diffusion Models?",
arXiv:2505.17013; ``TextualInversionProbe`` in kevinlu4588/WhenAreConceptsErased, after Gal et
al., ICLR 2023, "An Image is Worth One Word").

A new token ``<concept>`` is added to the erased model's tokenizer and its embedding learned
*against the erased model* (everything else frozen) with the denoising loss on base-model images
of the concept; if the erased model can still draw the concept from some input embedding, the
learned word finds it. The placeholder then goes into the concept's prompt templates (never
substring replacement: the authors' replacement missed 8 of their 13 concepts, silently turning
the probe into the standard prompt). Each training image is paired with its own prompt, the
placeholder in place of the concept's name. Defaults are the authors' (diffusers'
``textual_inversion.py``): 3000 steps, batch 1, gradient accumulation 4, lr 5e-4 scaled by the
accumulation (``--scale_lr``: 2e-3), constant schedule, AdamW (0.9, 0.999, weight decay 1e-2),
initializer token "object" (the paper-era runs used the concept's first three letters). The
learned embedding is saved in the run directory and reused by a rerun.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..config import safe_join
from ..generation import make_scheduler
from ..models.prediction import denoising_target
from . import _sampling
from .base import Probe, ProbeEnv, ProbeParams, ProbeResult


class TextualInversion(Probe):
    description = "Learn a new word's embedding against the erased model on base-model images; prompt with it."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025; Gal et al., ICLR 2023"
    needs_base = True

    class Params(ProbeParams):
        train_steps: int = Field(3000, ge=1)
        learning_rate: float = Field(5e-4, gt=0)
        gradient_accumulation: int = Field(4, ge=1)
        scale_lr: bool = True
        initializer_token: str = "object"
        #: base-model images learned from (the authors: the base model's standard-probe images)
        num_train_images: int = Field(30, ge=1)

    def placeholder(self) -> str:
        return "<" + self.ctx.concept.name.replace(" ", "-") + ">"

    def learn(self, env: ProbeEnv):
        pipe = env.erased
        tok = copy.deepcopy(pipe.tokenizer)
        te = copy.deepcopy(pipe.text_encoder)
        ph = self.placeholder()
        tok.add_tokens([ph])
        pid = tok.convert_tokens_to_ids(ph)
        te.resize_token_embeddings(len(tok))
        emb = te.get_input_embeddings()
        path = safe_join(env.artefacts, f"textual_inversion-{self.ctx.concept.name}.safetensors")
        if path.is_file():
            from safetensors.torch import load_file

            emb.weight.data[pid] = load_file(str(path))["embedding"].to(emb.weight)
            return tok, te, pid, {"embedding": str(path), "cached": True}
        init_ids = tok.encode(self.params.initializer_token, add_special_tokens=False)
        with torch.no_grad():
            emb.weight[pid] = emb.weight[init_ids].mean(0)
        p = self.params
        train_items = self.items()[: p.num_train_images]
        images = self.standard_images(env, train_items, "base")
        ph_prompts = [q for q, _ in self.items(word=ph)[: p.num_train_images]]
        gen = torch.Generator("cpu").manual_seed(self.ctx.seed)
        latents = _sampling.encode(pipe, images, sample=True, generator=gen)
        te.requires_grad_(False)
        emb.weight.requires_grad_(True)
        keep = emb.weight.detach().clone()
        frozen = torch.ones(len(tok), dtype=torch.bool)
        frozen[pid] = False
        lr = p.learning_rate * (p.gradient_accumulation if p.scale_lr else 1)
        opt = torch.optim.AdamW([emb.weight], lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        sched = pipe.scheduler
        alphas = sched.alphas_cumprod.to(latents.device)
        losses = []
        unet_grad = [q.requires_grad for q in pipe.unet.parameters()]
        pipe.unet.requires_grad_(False)
        try:
            for _step in range(p.train_steps):
                total = 0.0
                for _ in range(p.gradient_accumulation):
                    i = int(torch.randint(len(latents), (1,), generator=gen))
                    z = latents[i:i + 1]
                    noise = torch.randn(z.shape, generator=gen).to(z)
                    t = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=gen)
                    a = alphas[t].to(z)
                    x_t = a.sqrt() * z + (1 - a).sqrt() * noise
                    ids = tok(ph_prompts[i], padding="max_length", max_length=tok.model_max_length,
                              truncation=True, return_tensors="pt").input_ids.to(te.device)
                    cond = te(ids)[0].to(pipe.unet.dtype)
                    pred = pipe.unet(x_t, t.to(z.device), encoder_hidden_states=cond).sample
                    target = denoising_target(pipe, z, noise, t.to(z.device))
                    loss = F.mse_loss(pred.float(), target.float()) / p.gradient_accumulation
                    loss.backward()
                    total += float(loss)
                opt.step()
                opt.zero_grad()
                with torch.no_grad():
                    emb.weight[frozen] = keep[frozen]
                losses.append(total)
        finally:
            for q, g in zip(pipe.unet.parameters(), unet_grad, strict=True):
                q.requires_grad_(g)
        emb.weight.requires_grad_(False)
        from safetensors.torch import save_file

        path.parent.mkdir(parents=True, exist_ok=True)
        save_file({"embedding": emb.weight[pid].detach().cpu().contiguous()}, str(path))
        return tok, te, pid, {"embedding": str(path), "cached": False,
                              "loss_first_last": [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))]}

    def run(self, env: ProbeEnv) -> ProbeResult:
        tok, te, _, info = self.learn(env)
        items = self.items(word=self.placeholder())
        cfg = env.erased.scheduler.config

        def sample(batch):
            pipe = type(env.erased).from_pipe(env.erased, tokenizer=tok, text_encoder=te)
            pipe.set_progress_bar_config(disable=True)
            return _sampling.run(pipe, batch, make_scheduler(self.ctx.config.sampler.scheduler, cfg),
                                 **self.sample_kwargs())

        images = self.cached_sample(env, "ti", {"embedding": info["embedding"]}, items, sample)
        return self.result(env, self.recovered(env, images), {"placeholder": self.placeholder(), "training": info,
                                                                "prompts": [list(it) for it in items]})
