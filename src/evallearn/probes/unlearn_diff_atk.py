"""UnlearnDiffAtk probe (Zhang et al., ECCV 2024, "To Generate or Not? Safety-Driven Unlearned
Diffusion Models Are Still Easy To Generate Unsafe Images ... For Now", arXiv:2310.11868; code:
OPTML-Group/Diffusion-MU-Attack), one of the optimisation-based probes of Lu et al. (2025,
arXiv:2505.17013), whose repository only post-processed its outputs.

For each (prompt, seed), ``num_tokens`` adversarial tokens are prepended to the prompt (after
the start token: the reference's ``prefix_k``) and optimised against the *erased* model so that
it denoises the base model's image of that prompt: the loss is the erased UNet's noise-prediction
MSE on the image's latent (VAE posterior mean) noised at a timestep from the reference's 50
evenly spaced ones — the unlearned model used as its own diffusion classifier. The tokens live in
the text encoder's token-embedding space: each step projects them to the nearest vocabulary
embeddings (cosine), takes the gradient at the projection, and updates the continuous embeddings
with Adam (lr 0.01, weight decay 0.1), as in the reference ``HardPromptAttacker``. The final
projected tokens make the adversarial prompt, sampled once with the item's seed.

Deviations: the reference checks attack success with the scoring classifier after each
timestep's round and stops early — selection by the scorer, which is not done here (the final
prompt is used); timesteps are drawn at random from the 50 instead of swept in order.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field

from ..generation import make_scheduler
from ..models.prediction import denoising_target
from . import _sampling
from .base import Probe, ProbeEnv, ProbeParams, ProbeResult


class UnlearnDiffAtk(Probe):
    description = "Adversarial prompt tokens optimised against the erased model to denoise base-model images."
    paper = "Zhang et al., UnlearnDiffAtk, ECCV 2024; Lu et al., NeurIPS 2025"
    needs_base = True

    class Params(ProbeParams):
        num_tokens: int = Field(5, ge=1, le=20)
        attack_steps: int = Field(40, ge=1)
        learning_rate: float = Field(0.01, gt=0)
        weight_decay: float = Field(0.1, ge=0)
        num_timesteps: int = Field(50, ge=1)

    def attack(self, env: ProbeEnv, item, target: np.ndarray) -> tuple[torch.Tensor, str, float]:
        pipe = env.erased
        tok, te, unet = pipe.tokenizer, pipe.text_encoder, pipe.unet
        p = self.params
        k = p.num_tokens
        gen = torch.Generator("cpu").manual_seed(int(item[1]))
        table = te.get_input_embeddings().weight.detach()
        table_n = F.normalize(table.float(), dim=-1)
        ids = tok(item[0], padding="max_length", max_length=tok.model_max_length - k, truncation=True,
                  return_tensors="pt").input_ids[0]
        ids = torch.cat([ids[:1], torch.full((k,), int(ids[-1])), ids[1:]]).unsqueeze(0).to(te.device)
        adv = table[torch.randint(0, len(table), (k,), generator=gen)].clone().float().requires_grad_(True)
        opt = torch.optim.Adam([adv], lr=p.learning_rate, weight_decay=p.weight_decay)
        state = {"emb": None}

        def hook(_module, _inputs, output):
            if state["emb"] is None:
                return output
            out = output.clone()
            out[:, 1:1 + k] = state["emb"].to(out.dtype)
            return out

        def project(x):
            idx = (F.normalize(x.detach().float(), dim=-1) @ table_n.T).argmax(-1)
            return table[idx].float(), idx

        x0 = _sampling.encode(pipe, target[None])
        T = pipe.scheduler.config.num_train_timesteps
        start = T // p.num_timesteps // 2
        t_list = list(range(start, T, T // p.num_timesteps))[: p.num_timesteps]
        alphas = pipe.scheduler.alphas_cumprod
        handle = te.get_input_embeddings().register_forward_hook(hook)
        was = [q.requires_grad for q in unet.parameters()]
        unet.requires_grad_(False)
        te.requires_grad_(False)
        losses = []
        try:
            for _ in range(p.attack_steps):
                proj, _ = project(adv)
                leaf = proj.clone().requires_grad_(True)
                state["emb"] = leaf
                t = t_list[int(torch.randint(len(t_list), (1,), generator=gen))]
                noise = torch.randn(x0.shape, generator=gen).to(x0)
                a = alphas[t].to(x0)
                x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
                cond = te(ids)[0].to(unet.dtype)
                pred = unet(x_t, torch.tensor([t], device=x0.device), encoder_hidden_states=cond).sample
                target = denoising_target(pipe, x0, noise, torch.tensor([t], device=x0.device))
                loss = F.mse_loss(pred.float(), target.float())
                adv.grad = torch.autograd.grad(loss, [leaf])[0]
                opt.step()
                opt.zero_grad()
                losses.append(float(loss))
            proj, idx = project(adv)
            state["emb"] = proj
            with torch.no_grad():
                embeds = te(ids)[0]
        finally:
            handle.remove()
            state["emb"] = None
            for q, g in zip(unet.parameters(), was, strict=True):
                q.requires_grad_(g)
        text = tok.decode(idx.tolist()) + " | " + item[0]
        return embeds, text, float(np.mean(losses[-5:]))

    def run(self, env: ProbeEnv) -> ProbeResult:
        items = self.items()
        targets = self.standard_images(env, items, "base")
        index = {it: i for i, it in enumerate(items)}
        cfg = env.erased.scheduler.config
        prompts: dict[str, dict] = {}
        meta_path = env.artefacts / "unlearn_diff_atk_prompts.json"
        if meta_path.is_file():
            import json

            prompts = json.loads(meta_path.read_text())

        def sample(batch):
            out = []
            for it in batch:
                embeds, text, loss = self.attack(env, it, targets[index[it]])
                prompts[f"{it[1]}:{it[0]}"] = {"adversarial_prompt": text, "final_loss": loss}
                env.erased.scheduler = make_scheduler(self.ctx.config.sampler.scheduler, cfg)
                kw = self.sample_kwargs()
                lat = _sampling.initial_latents(env.erased, [it[1]], kw["height"], kw["width"])
                img = env.erased(prompt_embeds=embeds, latents=lat, generator=_sampling.step_generators([it[1]]),
                                 output_type="np", **kw).images
                out.append(_sampling.to_uint8(np.asarray(img))[0])
            from ..store import atomic_write_json

            atomic_write_json(meta_path, prompts)
            return np.stack(out)

        images = self.cached_sample(env, "uda", {}, items, sample)
        return self.result(env, self.recovered(env, images), {"adversarial_prompts": prompts,
                                                                "prompts": [list(it) for it in items]})
