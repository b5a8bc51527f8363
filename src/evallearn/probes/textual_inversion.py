"""Textual-inversion probe of Lu et al. (2025, "When Are Concepts Erased From Diffusion Models?",
arXiv:2505.17013; ``TextualInversionProbe`` in kevinlu4588/WhenAreConceptsErased, after Gal et
al., ICLR 2023, "An Image is Worth One Word").

A new token ``<concept>`` is added to the erased model's tokenizer and its embedding learned
*against the erased model* (everything else frozen) with the denoising loss on base-model images
of the concept; if the erased model can still draw the concept from some input embedding, the
learned word finds it. Training follows the textual-inversion recipe as the authors ran it
(diffusers' ``textual_inversion.py``, Gal et al.'s data pipeline): each sample pairs a random
training image, flipped horizontally with probability 1/2, with a caption drawn at random from
the recipe's small ImageNet template set ("a photo of a {}", "a rendering of a {}", … — 27
object templates, or 19 style templates with ``learnable_property: style``; the authors used
``object`` for every concept), and a fresh draw from the VAE posterior of that image. Defaults:
3000 steps, batch 1, gradient accumulation 4, lr 5e-4 scaled by the accumulation
(``--scale_lr``: 2e-3), constant schedule, AdamW (0.9, 0.999, weight decay 1e-2), initializer
token "object" (the paper-era runs used the concept's first three letters). The embedding is
optimised as a float32 master copy whatever the pipeline's dtype (diffusers keeps the text
encoder in float32; AdamW's ε of 1e-8 is 0 in float16, where small gradients drive the row to
infinity).

The placeholder is then put into the concept's prompt templates (never substring replacement:
the authors' replacement missed 8 of their 13 concepts, silently turning the probe into the
standard prompt) and sampled with the same seeds as the standard prompt (a ``prompts_file``'s
seeds when one is given). The learned embedding is an entry of the one keyed cache
(:mod:`evallearn.cache`) in the run directory, keyed by everything its training reads
(:meth:`TextualInversion.embedding_spec`), and reused by a rerun with the same settings.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from pydantic import Field

from ..concepts.templates import OBJECT_TEMPLATES, STYLE_TEMPLATES  # the recipe's captions
from ..config import safe_join
from ..generation import make_scheduler
from ..models import text
from ..models.prediction import denoising_target
from . import _sampling
from .base import Probe, ProbeEnv, ProbeParams, ProbeResult

if TYPE_CHECKING:
    import torch

#: the learned embedding's file in its cache entry
EMBEDDING_FILE = "embedding.safetensors"



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
        #: caption templates: ``object`` (27, what the authors ran for every concept) or ``style`` (19)
        learnable_property: Literal["object", "style"] = "object"
        #: probability of a horizontal flip per training sample (the recipe's 0.5)
        flip_p: float = Field(0.5, ge=0.0, le=1.0)

    def placeholder(self) -> str:
        return "<" + self.ctx.concept.name.replace(" ", "-") + ">"

    def templates(self) -> tuple[str, ...]:
        return STYLE_TEMPLATES if self.params.learnable_property == "style" else OBJECT_TEMPLATES

    def eval_items(self) -> list:
        """The placeholder in the concept's templates, with the standard prompt's seeds (a
        ``prompts_file``'s own seeds when one is given)."""
        seeds = [s for _, s in self.items()]
        return [(q, s) for (q, _), s in zip(self.items(word=self.placeholder()), seeds, strict=False)]

    def draw(self, gen: torch.Generator, n_images: int) -> tuple[int, str, bool]:
        """One training sample: (image index, caption, flipped)."""
        import torch

        i = int(torch.randint(n_images, (1,), generator=gen))
        templates = self.templates()
        caption = templates[int(torch.randint(len(templates), (1,), generator=gen))].format(self.placeholder())
        flip = bool(torch.rand((), generator=gen) < self.params.flip_p)
        return i, caption, flip

    @staticmethod
    def posteriors(pipe, images: np.ndarray, chunk: int = 8) -> tuple[torch.Tensor, torch.Tensor]:
        """Scaled VAE posterior mean and std of each image, [N, 2 (as is, flipped), C, h, w]."""
        import torch

        means, stds = [], []
        sf = pipe.vae.config.scaling_factor
        for flip in (False, True):
            m, sd = [], []
            for a in range(0, len(images), chunk):
                x = torch.from_numpy(np.asarray(images[a:a + chunk])).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)
                if flip:
                    x = x.flip(-1)
                with torch.no_grad():
                    dist = pipe.vae.encode(x.to(pipe.device, pipe.vae.dtype)).latent_dist
                m.append(dist.mean.float() * sf)
                sd.append(dist.std.float() * sf)
            means.append(torch.cat(m))
            stds.append(torch.cat(sd))
        return torch.stack(means, 1), torch.stack(stds, 1)

    def embedding_spec(self) -> dict:
        """The complete key of the learned embedding (against this run's erased model, which the
        run directory keys): the training params and what the training reads of the run — the
        placeholder, the concept's items (prompt count, prompt file, seed) and the sampler of the
        base-model training images."""
        from ..cache import plain

        train = self.params.model_dump(mode="json", exclude={"judge", "judge_params", "scoring"})
        return {"kind": "probe_embedding", "name": "textual_inversion", "version": self.version, "train": train,
                "placeholder": self.placeholder(), "items": [list(it) for it in self.items()],
                "request": plain(self.request(self.items()[0])) if self.items() else None,
                "concept": plain(self.ctx.concept)}

    def learn(self, env: ProbeEnv):
        """The tokenizer and text encoder with the placeholder's embedding learned against the
        erased model (trained once, then read from the cache under the run's ``artefacts``)."""
        from safetensors.torch import load_file, save_file

        from ..cache import Cache

        pipe = env.erased
        tok = copy.deepcopy(pipe.tokenizer)
        te = copy.deepcopy(pipe.text_encoder)
        ph = self.placeholder()
        tok.add_tokens([ph])
        pid = tok.convert_tokens_to_ids(ph)
        te.resize_token_embeddings(len(tok))
        emb = te.get_input_embeddings()
        cache, spec = Cache(safe_join(env.artefacts, "embeddings")), self.embedding_spec()
        (vec, losses), hit = cache.get_or_compute(
            spec, lambda: self.train(env, tok, te, pid, emb),
            save=lambda value, folder: save_file({"embedding": value[0]}, str(folder / EMBEDDING_FILE)),
            load=lambda folder: (load_file(str(folder / EMBEDDING_FILE))["embedding"], None))
        import torch

        with torch.no_grad():
            emb.weight[pid] = vec.to(emb.weight)
        info = {"embedding": str(cache.path(spec) / EMBEDDING_FILE), "cached": hit}
        if losses is not None:
            info["loss_first_last"] = [float(np.mean(losses[:10])), float(np.mean(losses[-10:]))]
        return tok, te, pid, info

    def train(self, env: ProbeEnv, tok, te, pid: int, emb):
        """The placeholder's embedding (float32, on the CPU) and the loss of each step."""
        import torch
        import torch.nn.functional as F

        pipe = env.erased
        p = self.params
        init_ids = tok.encode(p.initializer_token, add_special_tokens=False)
        # float32 master copy of the new row, whatever the text encoder's dtype
        vec = emb.weight.detach()[init_ids].float().mean(0).clone().requires_grad_(True)
        train_items = self.items()[: p.num_train_images]
        images = self.standard_images(env, train_items, "base")
        gen = torch.Generator("cpu").manual_seed(self.ctx.seed)
        mean, std = self.posteriors(pipe, images)

        def inject(_module, inputs, output):
            mask = (inputs[0] == pid).unsqueeze(-1)
            if not bool(mask.any()):
                return output
            return torch.where(mask, vec.to(output.dtype), output)

        te.requires_grad_(False)
        lr = p.learning_rate * (p.gradient_accumulation if p.scale_lr else 1)
        opt = torch.optim.AdamW([vec], lr=lr, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
        sched = pipe.scheduler
        alphas = sched.alphas_cumprod.to(mean.device)
        losses = []
        unet_grad = [q.requires_grad for q in pipe.unet.parameters()]
        pipe.unet.requires_grad_(False)
        with text.embedding_hook(te, inject):
            try:
                for _step in range(p.train_steps):
                    total = 0.0
                    for _ in range(p.gradient_accumulation):
                        i, caption, flip = self.draw(gen, len(images))
                        eps_vae = torch.randn(mean[i, int(flip)].shape, generator=gen).to(mean)
                        z = (mean[i, int(flip)] + std[i, int(flip)] * eps_vae)[None].to(pipe.unet.dtype)
                        noise = torch.randn(z.shape, generator=gen).to(z)
                        t = torch.randint(0, sched.config.num_train_timesteps, (1,), generator=gen)
                        a = alphas[t].to(z)
                        x_t = a.sqrt() * z + (1 - a).sqrt() * noise
                        ids = text.tokenize(tok, caption).input_ids.to(te.device)
                        cond = te(ids)[0].to(pipe.unet.dtype)
                        pred = pipe.unet(x_t, t.to(z.device), encoder_hidden_states=cond).sample
                        target = denoising_target(pipe, z, noise, t.to(z.device))
                        loss = F.mse_loss(pred.float(), target.float()) / p.gradient_accumulation
                        loss.backward()
                        total += float(loss.detach())
                    opt.step()
                    opt.zero_grad()
                    losses.append(total)
            finally:
                for q, g in zip(pipe.unet.parameters(), unet_grad, strict=True):
                    q.requires_grad_(g)
        if not torch.isfinite(vec).all():
            raise RuntimeError("textual_inversion: the learned embedding is not finite")
        return vec.detach().cpu().contiguous(), losses


    def run(self, env: ProbeEnv) -> ProbeResult:
        tok, te, _, info = self.learn(env)
        items = self.eval_items()
        cfg = env.erased.scheduler.config

        def sample(batch):
            pipe = type(env.erased).from_pipe(env.erased, tokenizer=tok, text_encoder=te)
            pipe.set_progress_bar_config(disable=True)
            return _sampling.run(pipe, batch, make_scheduler(self.ctx.config.sampler.scheduler, cfg),
                                 **self.sample_kwargs())

        setting = {"embedding": Path(info["embedding"]).parent.name}  # the cache entry: its training's hash
        images = self.cached_sample(env, "ti", setting, items, sample)
        rec, samples = self.scored(env, images, items, self.sample_keys("ti", setting, items),
                                   setting=self.placeholder())
        return self.result(env, rec, {"placeholder": self.placeholder(), "training": info,
                                      "prompts": [list(it) for it in items]}, samples)
