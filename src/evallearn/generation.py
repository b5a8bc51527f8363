"""The generation engine: hashable requests in, stored images out.

A :class:`GenRequest` says everything that determines one image. Requests from every metric
and probe of a run are deduplicated; requests that share sampler settings are batched; each
request carries its own seeded ``torch.Generator`` so its initial latent and step noise do not
depend on its batch or its position in it (diffusers draws per-sample noise from a list of
generators).

Batches are a fixed partition of the full, ordered request list, not of what is left to do:
a resumed run therefore replays exactly the batches of an uninterrupted one, so a killed and
resumed run gives bit-identical images even where batched BLAS kernels differ in the last bit.

Every image is checked for non-finite values (NaN/inf) in its latents at each step (where the
pipeline takes ``callback_on_step_end``) and in its decoded pixels; such a request is handed to
``put`` with a description of the fault, so the runner can keep it out of every score.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .hashing import short_hash


@dataclass(frozen=True)
class GenRequest:
    prompt: str
    seed: int
    negative_prompt: str = ""
    steps: int = 20
    guidance_scale: float = 6.0
    height: int = 512
    width: int = 512
    scheduler: str = "ddim"
    eta: float = 0.0

    @property
    def key(self) -> str:
        return short_hash(dataclasses.asdict(self), 20)

    @property
    def settings(self) -> tuple:
        """What must be equal for two requests to share a batch."""
        return (self.steps, self.guidance_scale, self.height, self.width, self.scheduler, self.eta)


def dedupe(requests: Iterable[GenRequest]) -> list[GenRequest]:
    return list(dict.fromkeys(requests))


def plan_batches(requests: Sequence[GenRequest], batch_size: int) -> list[list[GenRequest]]:
    """Deduplicate, group by settings (first-seen order), and cut each group into batches."""
    groups: dict[tuple, list[GenRequest]] = {}
    for req in dedupe(requests):
        groups.setdefault(req.settings, []).append(req)
    batches = []
    for group in groups.values():
        batches.extend(group[i : i + batch_size] for i in range(0, len(group), batch_size))
    return batches


_SCHEDULERS = {
    "ddim": "DDIMScheduler",
    "pndm": "PNDMScheduler",
    "dpm++": "DPMSolverMultistepScheduler",
    "euler": "EulerDiscreteScheduler",
    "euler_a": "EulerAncestralDiscreteScheduler",
    "lms": "LMSDiscreteScheduler",
}


def make_scheduler(name: str, base_config):
    """A fresh scheduler of the named kind, built from the pipeline's scheduler config."""
    import diffusers

    cls_name = base_config["_class_name"] if name == "default" else _SCHEDULERS[name]
    return getattr(diffusers, cls_name).from_config(base_config)


def to_uint8(images: np.ndarray) -> np.ndarray:
    return (np.clip(images, 0.0, 1.0) * 255.0).round().astype(np.uint8)


class Generator:
    """Runs batches of requests through a text-to-image pipeline.

    ``pipe`` is any diffusers text-to-image pipeline or a technique's wrapper with the same
    call signature (inference-time techniques subclass the pipeline).
    """

    def __init__(self, pipe, device: str = "cpu") -> None:
        self.pipe = pipe
        self.device = device
        self._base_scheduler_config = pipe.scheduler.config
        self._schedulers: dict[str, object] = {}

    def _scheduler(self, name: str):
        if name not in self._schedulers:
            self._schedulers[name] = make_scheduler(name, self._base_scheduler_config)
        return self._schedulers[name]

    @functools.cached_property
    def _takes_step_callback(self) -> bool:
        try:
            return "callback_on_step_end" in inspect.signature(self.pipe.__call__).parameters
        except (TypeError, ValueError):
            return False

    def sample(self, batch: Sequence[GenRequest]) -> tuple[np.ndarray, list[dict[str, Any] | None]]:
        """uint8 images of ``batch`` and, per request, None or what was non-finite.

        A non-finite request's image has its NaN/inf pixels set to 0 before conversion, so the
        PNG kept for it is deterministic (it is never scored)."""
        import torch  # here, not at import: planning a run (validate) needs no torch

        with torch.no_grad():
            return self._sample(batch)

    def _sample(self, batch: Sequence[GenRequest]) -> tuple[np.ndarray, list[dict[str, Any] | None]]:
        import torch

        first = batch[0]
        self.pipe.scheduler = self._scheduler(first.scheduler)
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in batch]
        kwargs = dict(
            prompt=[r.prompt for r in batch],
            negative_prompt=[r.negative_prompt for r in batch],
            num_inference_steps=first.steps,
            guidance_scale=first.guidance_scale,
            height=first.height,
            width=first.width,
            generator=generators,
            output_type="np",
        )
        if first.eta:
            kwargs["eta"] = first.eta
        first_bad_step: list[int | None] = [None] * len(batch)
        if self._takes_step_callback:

            def watch(pipe, i, t, tensors):
                lat = tensors.get("latents")
                if lat is not None and lat.shape[0] == len(batch):
                    finite = torch.isfinite(lat.reshape(lat.shape[0], -1)).all(dim=1)
                    for j in (~finite).nonzero().flatten().tolist():
                        if first_bad_step[j] is None:
                            first_bad_step[j] = i + 1
                return {}

            kwargs["callback_on_step_end"] = watch
        out = self.pipe(**kwargs)
        images = np.asarray(out.images, dtype=np.float32)
        faults: list[dict[str, Any] | None] = []
        for j, img in enumerate(images):
            bad_pixels = int((~np.isfinite(img)).sum())
            if bad_pixels or first_bad_step[j] is not None:
                faults.append({"nonfinite_pixels": bad_pixels, "pixels": int(img.size),
                               "latents_nonfinite_from_step": first_bad_step[j], "steps": first.steps})
            else:
                faults.append(None)
        images = np.nan_to_num(images, nan=0.0, posinf=0.0, neginf=0.0)
        return to_uint8(images), faults

    def run_batch(self, batch: Sequence[GenRequest]) -> np.ndarray:
        return self.sample(batch)[0]

    def generate(
        self,
        requests: Sequence[GenRequest],
        have: Callable[[GenRequest], bool],
        put: Callable[[GenRequest, np.ndarray], None],
        batch_size: int,
        progress: Callable[[int], None] | None = None,
        put_nonfinite: Callable[[GenRequest, np.ndarray, dict[str, Any]], None] | None = None,
        pad: bool = False,
    ) -> int:
        """Generate every request that ``have`` says is missing; ``put(request, image)`` stores
        each image. A request whose latents or pixels were NaN/inf goes to
        ``put_nonfinite(request, image, fault)`` instead (``fault`` says what was non-finite);
        without that callback it is stored like any other.

        With ``pad``, a batch shorter than ``batch_size`` (the last of its settings group) is
        filled up with copies of its last request whose images are dropped: every image is then
        computed in a batch of exactly ``batch_size`` rows. Batched float kernels give a row the
        same result whatever its neighbours at a fixed batch size, but may round differently at
        another one, so a padded image depends on its request and ``batch_size`` alone, not on
        which other requests happened to be generated with it (shared base-model images).

        Returns the number of images written.
        """
        written = 0
        for batch in plan_batches(requests, batch_size):
            missing = [r for r in batch if not have(r)]
            if missing:
                filler = [batch[-1]] * (batch_size - len(batch)) if pad else []
                images, faults = self.sample([*batch, *filler])
                images, faults = images[: len(batch)], faults[: len(batch)]
                for req, img, fault in zip(batch, images, faults, strict=True):
                    if not have(req):
                        if fault is None or put_nonfinite is None:
                            put(req, img)
                        else:
                            put_nonfinite(req, img, fault)
                        written += 1
            if progress is not None:
                progress(len(missing))
        return written
