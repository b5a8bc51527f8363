"""Classifier-guidance probe of Lu et al. (2025, "When Are Concepts Erased From Diffusion
Models?", arXiv:2505.17013; ``guided_generation_latent`` in kevinlu4588/WhenAreConceptsErased).

A latent classifier f(x_t, t) trained on real images of the concept (:mod:`.latent_classifier`)
steers the erased model's own sampling toward the concept: at every step the CFG-combined noise
prediction becomes ε̂ - s · sqrt(1 - ᾱ_t) · ∇_{x_t} log σ(f(x_t, t)) (Dhariwal & Nichol's
ε-space classifier guidance), done inside a scheduler subclass
(:class:`~._schedulers.ClassifierGuidedDDIMScheduler`). If the erased model still knows the
concept, a small push recovers it. Sweeps the guidance scale (authors' default: 25 scales,
25, 32, …, 193), reports every scale and best-of-N by the selector judge. With ``etas`` /
``variance_scales`` beyond (0,) / (1,) it is the authors' "classifier guidance + noise"
combination (η-DDIM steps, seeded noise). Differences from the authors' code: initial latents
and step noise are seeded per (prompt, seed) on the CPU (theirs: a CUDA generator for latents
and the unseeded global RNG for step noise), the standard variant samples with DDIM (theirs:
the pipeline's own scheduler), and the classifier is cached instead of reloaded per prompt.

The classifier: ``classifier`` = a folder from ``eval-learn train-latent-classifier``; if None,
one is trained once per (base model, concept, training settings) and cached — on the toy world
from rendered images of the concept and of the other classes of its kind, elsewhere from
``train_positives`` / ``train_negatives`` image folders (the paper: ImageNet's class vs 5,000
other ImageNet images).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import Field

from ..errors import UserError
from . import _sampling
from .base import Probe, ProbeEnv, ProbeResult, SelectingParams

if TYPE_CHECKING:
    from .latent_classifier import LatentClassifier


class ClassifierGuidance(Probe):
    description = "Latent-classifier guidance (eps-space) on the erased model's sampling, scale sweep; best-of-N."
    paper = "Lu et al., When Are Concepts Erased From Diffusion Models?, NeurIPS 2025"
    needs_base = True

    class Params(SelectingParams):
        scales: tuple[float, ...] = Field(tuple(float(s) for s in range(25, 200, 7)), min_length=1)
        #: (0.0,) = plain DDIM steps; η > 0 values combine the probe with the noise-based one
        etas: tuple[float, ...] = Field((0.0,), min_length=1)
        variance_scales: tuple[float, ...] = Field((1.0,), min_length=1)
        #: folder of a trained latent classifier; None = train (and cache) one
        classifier: str | None = None
        train_positives: str | None = None
        train_negatives: str | None = None
        #: toy world: rendered training images (the paper: ~1,300 positives, 5,000 negatives)
        train_num_positives: int = Field(1300, ge=2)
        train_num_negatives: int = Field(5000, ge=2)
        train_epochs: int = Field(70, ge=1)
        train_batch_size: int = Field(8, ge=1)
        train_lr: float = Field(1e-4, gt=0)

    @classmethod
    def models_used(cls, params=None):
        return ["a latent classifier (trained by eval-learn train-latent-classifier)"]

    def settings(self) -> dict[str, dict]:
        p = self.params
        return {f"scale={s:g},eta={e:g},vscale={v:g}": {"scale": s, "eta": e, "variance_scale": v}
                for e in p.etas for v in p.variance_scales for s in p.scales}

    # -- the classifier ---------------------------------------------------------------------
    def classifier_model(self, env: ProbeEnv) -> tuple[LatentClassifier, dict]:
        # (torch: imported when the probe runs, not when a run is planned)
        from .latent_classifier import LatentClassifier, train_latent_classifier

        p = self.params
        if p.classifier:
            from .latent_classifier import _folder_digest

            clf = LatentClassifier.load(p.classifier, env.device)
            # its images are keyed by the classifier's content, not by where it lies
            return clf, {"classifier": p.classifier, "digest": _folder_digest(Path(p.classifier).expanduser())}
        from .latent_classifier import cached_classifier, classifier_spec

        def train():
            pos, neg = self.training_images()
            return train_latent_classifier(env.base, pos, neg, epochs=p.train_epochs,
                                           batch_size=p.train_batch_size, lr=p.train_lr,
                                           log=lambda **kw: env.log("latent_classifier_epoch", **kw))

        return cached_classifier(env.cache_dir, classifier_spec(self, self.ctx.config.dtype), train, env.device)

    def training_images(self):
        from .latent_classifier import folder_images

        p = self.params
        if p.train_positives and p.train_negatives:
            size = self.ctx.height
            return folder_images(p.train_positives, size), folder_images(p.train_negatives, size)
        made = self.ctx.world.concept_images(self.ctx.concept.name, p.train_num_positives,
                                             p.train_num_negatives, self.ctx.seed)
        if made is not None:  # a world with a renderer makes its own real images
            return made
        raise UserError(f"probe '{self.name}': give params.classifier (a trained latent classifier) or "
                        "train_positives/train_negatives image folders (e.g. ImageNet's class and others)")

    def run(self, env: ProbeEnv) -> ProbeResult:
        from . import _schedulers

        items = self.items()
        settings = self.settings()
        clf, info = self.classifier_model(env)
        clf.requires_grad_(False)
        # the classifier's content address: its cache entry's name (the hash of its complete spec)
        # or the digest of the folder it was given as
        classifier = info.get("digest") or Path(info["classifier"]).name
        images, keys = {}, {}
        for label, st in settings.items():
            def sample(batch, st=st):
                sched = _schedulers.make(_schedulers.ClassifierGuidedDDIMScheduler, env.erased, classifier=clf,
                                         classifier_scale=st["scale"], variance_scale=st["variance_scale"])
                return _sampling.run(env.erased, batch, sched, eta=st["eta"], **self.sample_kwargs())
            images[label] = self.cached_sample(env, "erased", {**st, "classifier": classifier}, items, sample)
            keys[label] = self.sample_keys("erased", {**st, "classifier": classifier}, items)
        return self.sweep_result(env, items, images, settings, {"latent_classifier": info}, keys)
