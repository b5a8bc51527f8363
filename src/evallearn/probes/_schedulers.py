"""Scheduler subclasses the probes of Lu et al. (2025, "When Are Concepts Erased From Diffusion
Models?", arXiv:2505.17013) sample with. They plug into any diffusers text-to-image pipeline
through ``pipe.scheduler``; no pipeline code is copied or patched.

* :class:`EtaDDIMScheduler` — DDIM with η > 1 (the noise-based probe). With
  σ_t = η · sqrt((1 - ᾱ_prev)/(1 - ᾱ_t) · (1 - ᾱ_t/ᾱ_prev)) a step is

      x_prev = sqrt(ᾱ_prev) x̂₀ + sqrt(|1 - ᾱ_prev - σ_t²|) ε̂ + s · σ_t · z

  where ``s`` is :attr:`variance_scale` (the authors' ``variance_scale``; the absolute value is
  their guard that keeps η > 1 finite). ``eta`` arrives through the pipeline's ``eta=`` argument
  and the noise ``z`` from the pipeline's ``generator=`` list, so both are seeded per image.
  ``variance_scale`` is an attribute, which is why it cannot be silently dropped by the pipeline
  the way the authors' keyword argument is.
* :class:`ClassifierGuidedDDIMScheduler` — the same step after Dhariwal & Nichol ε-space
  classifier guidance with a latent classifier f(x_t, t):
  ε̂ ← ε̂ - s_c · sqrt(1 - ᾱ_t) · ∇_{x_t} log σ(f(x_t, t)). ``ε̂`` is the pipeline's
  CFG-combined prediction, as in the authors' loop; a v-prediction model's output is turned into
  ε̂ first, and x̂₀ follows from the guided ε̂.
* :class:`SlicedDDIMScheduler` — DDIM that runs only timesteps ``[start:stop]`` of the usual
  schedule (diffusion completion: the base model runs the first k steps, the erased model
  resumes from step k on the same schedule).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDIMScheduler
from diffusers.schedulers.scheduling_ddim import DDIMSchedulerOutput
from diffusers.utils.torch_utils import randn_tensor


class EtaDDIMScheduler(DDIMScheduler):
    variance_scale: float = 1.0

    def guide(self, eps: torch.Tensor, timestep: int, sample: torch.Tensor) -> torch.Tensor:
        """Hook to change ε̂ before the update (identity here); x̂₀ follows from the new ε̂."""
        return eps

    def _alphas(self, timestep: int):
        prev = timestep - self.config.num_train_timesteps // self.num_inference_steps
        a_t = self.alphas_cumprod[timestep]
        a_prev = self.alphas_cumprod[prev] if prev >= 0 else self.final_alpha_cumprod
        return prev, a_t, a_prev

    def step(self, model_output, timestep, sample, eta: float = 0.0, use_clipped_model_output: bool = False,
             generator=None, variance_noise=None, return_dict: bool = True):
        if self.num_inference_steps is None:
            raise ValueError("call set_timesteps before step")
        t = int(timestep)
        prev, a_t, a_prev = self._alphas(t)
        kind = self.config.prediction_type
        if kind == "epsilon":
            eps = model_output
            x0 = (sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        elif kind == "v_prediction":
            x0 = a_t.sqrt() * sample - (1 - a_t).sqrt() * model_output
            eps = a_t.sqrt() * model_output + (1 - a_t).sqrt() * sample
        else:
            raise ValueError(f"EtaDDIMScheduler: prediction_type '{kind}' is not supported")
        guided = self.guide(eps, t, sample)
        if guided is not eps and a_t > 0:  # at zero terminal SNR x_t holds no x0 to guide
            eps = guided
            x0 = (sample - (1 - a_t).sqrt() * eps) / a_t.sqrt()
        if self.config.clip_sample:
            x0 = x0.clamp(-self.config.clip_sample_range, self.config.clip_sample_range)
            if use_clipped_model_output:
                eps = (sample - a_t.sqrt() * x0) / (1 - a_t).sqrt()
        sigma = eta * self._get_variance(t, prev).sqrt()
        prev_sample = a_prev.sqrt() * x0 + (1 - a_prev - sigma**2).abs().sqrt() * eps
        if eta > 0:
            if variance_noise is None:
                variance_noise = randn_tensor(model_output.shape, generator=generator, device=model_output.device,
                                              dtype=model_output.dtype)
            prev_sample = prev_sample + self.variance_scale * sigma * variance_noise
        if not return_dict:
            return prev_sample, x0
        return DDIMSchedulerOutput(prev_sample=prev_sample, pred_original_sample=x0)


class ClassifierGuidedDDIMScheduler(EtaDDIMScheduler):
    #: callable (latents float32 [B, C, H, W], timesteps long [B]) -> logits [B]
    classifier = None
    classifier_scale: float = 0.0

    def guide(self, eps, timestep, sample):
        if self.classifier is None or not self.classifier_scale:
            return eps
        with torch.enable_grad():
            x = sample.detach().float().requires_grad_(True)
            t = torch.full((x.shape[0],), timestep, dtype=torch.long, device=x.device)
            log_p = F.logsigmoid(self.classifier(x, t)).sum()
            grad = torch.autograd.grad(log_p, x)[0]
        a_t = self.alphas_cumprod[timestep]
        return eps - self.classifier_scale * (1 - a_t).sqrt() * grad.to(eps.dtype)


class SlicedDDIMScheduler(DDIMScheduler):
    start: int = 0
    stop: int | None = None

    def set_timesteps(self, num_inference_steps: int, device=None):
        super().set_timesteps(num_inference_steps, device=device)
        self.timesteps = self.timesteps[self.start:self.stop]


def make(cls, pipe, **attrs):
    """A fresh ``cls`` built from ``pipe``'s scheduler config, with attributes set."""
    sched = cls.from_config(pipe.scheduler.config)
    for k, v in attrs.items():
        setattr(sched, k, v)
    return sched
