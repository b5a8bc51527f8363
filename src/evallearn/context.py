"""What components see of a run: the concept, sampler defaults, seed, device, cache folders."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .config import ConceptConfig, RunConfig
from .generation import GenRequest
from .models.loading import ModelInfo


@dataclass
class RunContext:
    config: RunConfig
    model: ModelInfo
    cache_dir: Path
    extras: dict = field(default_factory=dict)

    @property
    def concept(self) -> ConceptConfig:
        return self.config.concept

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
