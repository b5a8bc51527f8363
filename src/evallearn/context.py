"""What components see of a run: the concept, sampler defaults, seed, device, cache folders."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from .concepts.concept import Concept
from .config import RunConfig
from .generation import GenRequest
from .models.loading import ModelInfo, device_problem


@dataclass
class RunContext:
    config: RunConfig
    model: ModelInfo
    cache_dir: Path
    extras: dict = field(default_factory=dict)
    #: the concept as the model's world resolved it (``prepare()`` sets it; else resolved on first use)
    resolved_concept: Concept | None = None

    @property
    def concept(self) -> Concept:
        """The run's resolved concept: what every technique, metric and probe reads."""
        if self.resolved_concept is None:
            self.resolved_concept = resolve_concept(self.config, self.model)
        return self.resolved_concept

    @property
    def world(self):
        """The model's :class:`~evallearn.concepts.world.World`."""
        from .concepts.world import world_of

        return world_of(self.model)

    @property
    def seed(self) -> int:
        return self.config.seed

    @property
    def device(self) -> str:
        return self.config.device

    @property
    def height(self) -> int:
        return self.config.sampler.height or self.model.default_size

    @property
    def width(self) -> int:
        return self.config.sampler.width or self.model.default_size

    def request(self, prompt: str, seed: int, negative_prompt: str = "", **overrides) -> GenRequest:
        """A request with the run's sampler settings (``overrides`` win)."""
        s = self.config.sampler
        fields = dict(
            prompt=prompt,
            seed=seed,
            negative_prompt=negative_prompt,
            steps=s.steps,
            guidance_scale=s.guidance_scale,
            height=self.height,
            width=self.width,
            scheduler=s.scheduler,
            eta=s.eta,
        )
        fields.update(overrides)
        return GenRequest(**fields)


def resolve_concept(config: RunConfig, model: ModelInfo) -> Concept:
    """``config.concept`` resolved by ``model``'s world."""
    from .concepts.world import world_of

    return world_of(model).resolve_concept(config.concept)


def _output_dir_problem(output_dir: str) -> str | None:
    path = Path(output_dir).expanduser()
    probe = path
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        what = "is a file" if probe == path else f"cannot be created: {probe} is a file"
        return f"output_dir '{output_dir}' {what}, not a folder"
    if probe.exists() and not os.access(probe, os.W_OK | os.X_OK):
        what = "is not writable" if probe == path else f"cannot be created: {probe} is not writable"
        return f"output_dir '{output_dir}' {what}"
    return None


def run_problems(config: RunConfig, model: ModelInfo) -> list[str]:
    """What stops ``config`` from running on ``model`` here, one line each, found without loading
    any weights: the device, the image size against the model, the output folder."""
    problems = []
    why = device_problem(config.device)
    if why:
        problems.append(f"config: {why}")
    for key in ("height", "width"):
        value = getattr(config.sampler, key)
        if value is None:
            continue
        if value % model.vae_factor:
            problems.append(f"config: sampler.{key} {value}: not a multiple of {model.vae_factor}, the VAE "
                            f"factor of model '{model.ref}'")
        elif value < model.min_size:
            problems.append(f"config: sampler.{key} {value}: below {model.min_size}, the smallest size model "
                            f"'{model.ref}' draws at (its UNet's deepest level would be under 2x2 latent pixels)")
    why = _output_dir_problem(config.output_dir)
    if why:
        problems.append(f"config: {why}")
    return problems
