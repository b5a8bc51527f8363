"""The toy world: a tiny text-to-image model with ground truth, the project's default model.

Procedural renders of shapes x colours x fill styles x backgrounds (:mod:`.render`), a
``StableDiffusionPipeline`` trained on them (:func:`toy_pipeline_dir`), a tiny ``CLIPModel``
trained contrastively on their captions (:func:`toy_clip_dir`), a classifier that judges
generated images against ground truth (:func:`load_toy_classifier`) and the concepts and prompt
sets the metrics need (:mod:`.concepts`). See ``docs/toyworld.md``.

Default sampler for the shipped pipeline: 32x32 px, DDIM 20 steps, guidance 4 (``DEFAULT_GUIDANCE``).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

from .concepts import (
    SYNONYMS,
    UNSAFE_CONCEPT,
    ToyConcept,
    ToyPromptSet,
    toy_concept,
    toy_concept_names,
    toy_concepts,
    unsafe_prompt_set,
)
from .render import BACKGROUNDS, CLASSES, COLOURS, HEADS, IMAGE_SIZE, SHAPES, STYLES, render, render_dataset

DEFAULT_STEPS = 20
DEFAULT_GUIDANCE = 4.0
DEFAULT_SIZE = IMAGE_SIZE

__all__ = [
    "BELOW_BAR",
    "GROUND_TRUTH_BAR",
    "ground_truth",
    "meets_ground_truth_bar",
    "BACKGROUNDS",
    "CLASSES",
    "COLOURS",
    "DEFAULT_GUIDANCE",
    "DEFAULT_SIZE",
    "DEFAULT_STEPS",
    "HEADS",
    "IMAGE_SIZE",
    "SHAPES",
    "STYLES",
    "SYNONYMS",
    "UNSAFE_CONCEPT",
    "ToyClassifier",
    "ToyConcept",
    "ToyPromptSet",
    "load_toy_classifier",
    "render",
    "render_dataset",
    "toy_classifier_dir",
    "toy_clip_dir",
    "toy_concept",
    "toy_concept_names",
    "toy_concepts",
    "toy_pipeline_dir",
    "unsafe_prompt_set",
    "weights_dir",
]


def weights_dir() -> Path:
    """The package folder holding the shipped toy artefacts."""
    return Path(str(resources.files("evallearn_toy") / "weights"))


def _existing(sub: str) -> Path:
    path = weights_dir() / sub
    if not path.is_dir():
        from evallearn.errors import UserError

        raise UserError(f"toy weights missing: {path} (run 'eval-learn toy train --install')")
    return path


#: the ground-truth bar of issue 3: the toy model must draw the prompted shape and colour this
#: often before an erasure measured on it means anything
GROUND_TRUTH_BAR = {"shape": 0.90, "colour": 0.90}
BELOW_BAR = "the shipped toy model is below its shape ground-truth bar (docs/toyworld.md): no erasure shows on it"


def ground_truth() -> dict | None:
    """The shipped pipeline's measured ground truth (``eval-learn toy evaluate --out``), if any."""
    import json

    path = weights_dir() / "ground_truth.json"
    return json.loads(path.read_text()) if path.is_file() else None


def meets_ground_truth_bar(heads: tuple[str, ...] = ("shape", "colour")) -> bool:
    """True when shipped weights exist and were measured at or above :data:`GROUND_TRUTH_BAR`
    for ``heads``.

    Erasure tests on the toy world are gated on this: on a model that cannot draw a concept,
    "the concept's score drops" shows nothing. The shape-erasure tests need the shape bar only.
    """
    gt = ground_truth()
    if gt is None or not (weights_dir() / "pipeline" / "model_index.json").is_file():
        return False
    return all(gt["mean"][k] >= GROUND_TRUTH_BAR[k] for k in heads)


def toy_pipeline_dir() -> Path:
    """Folder of the shipped ``StableDiffusionPipeline`` (``from_pretrained(dir)`` loads it)."""
    return _existing("pipeline")


def toy_clip_dir() -> Path:
    """Folder of the shipped tiny ``CLIPModel`` + ``CLIPProcessor``."""
    return _existing("clip")


def toy_classifier_dir() -> Path:
    return _existing("classifier")


def load_toy_classifier(device: str = "cpu", path: str | Path | None = None):
    """The shipped :class:`ToyClassifier` (an ``nn.Module`` in eval mode) on ``device``."""
    from .classifier import ToyClassifier

    return ToyClassifier.load(path or toy_classifier_dir(), device=device)


def __getattr__(name: str):
    if name == "ToyClassifier":  # keep torch out of ``import evallearn_toy``
        from .classifier import ToyClassifier

        return ToyClassifier
    raise AttributeError(name)
