"""An ImageNet-1k classifier through transformers: ResNet-50 (He et al., CVPR 2016, "Deep
Residual Learning for Image Recognition"), hub id ``microsoft/resnet-50``; no torchvision.

The object-erasure papers (ESD, Gandikota et al., ICCV 2023; UCE; UnlearnDiffAtk on Imagenette)
count an image as showing the class when it is the classifier's **top-1** prediction over all
1,000 classes. ``classify`` does exactly that and maps the predicted label to a candidate word
when one of the label's comma-separated names equals it (``"garbage truck"`` matches
``"garbage truck, dustcart"``); with ``restrict_to_candidates`` it picks the best candidate
instead. Preprocessing is the standard ImageNet evaluation transform (resize the short side to
224/0.875 = 256 px bicubic, centre-crop 224, ImageNet mean/std), done with PIL.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from ..components import Params
from ..errors import UserError
from ._hub import model_folder
from .base import Judge

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


@lru_cache(maxsize=2)
def _load(ref: str, device: str):
    from transformers import AutoModelForImageClassification

    folder = model_folder(ref, "imagenet", "classifier")
    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except OSError as exc:
        raise UserError(f"judge 'imagenet': cannot load {folder}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def preprocess(images: np.ndarray, size: int = 224, crop_pct: float = 0.875) -> np.ndarray:
    from PIL import Image

    short = int(round(size / crop_pct))
    out = []
    for img in images:
        im = Image.fromarray(img)
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - size) // 2, (h - size) // 2
        im = im.crop((left, top, left + size, top + size))
        out.append((np.asarray(im, dtype=np.float32) / 255.0 - MEAN) / STD)
    return np.stack(out).transpose(0, 3, 1, 2)


def label_names(label: str) -> list[str]:
    return [n.strip().lower() for n in label.split(",") if n.strip()]


class ImageNetJudge(Judge):
    description = "ImageNet-1k classifier (ResNet-50 via transformers): top-1 class, class probability."
    paper = "He et al., CVPR 2016"

    class Params(Params):
        model: str = "microsoft/resnet-50"
        batch_size: int = 32
        #: pick the most probable candidate instead of the top-1 over all classes
        restrict_to_candidates: bool = False

    @classmethod
    def models_used(cls, params=None):
        return [(params or cls.Params()).model]

    def probs(self, images: np.ndarray) -> np.ndarray:
        import torch

        model = _load(self.params.model, self.device)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.params.batch_size):
                x = torch.from_numpy(preprocess(images[i : i + self.params.batch_size])).to(self.device)
                out.append(torch.softmax(model(pixel_values=x).logits.float(), -1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def class_index(self, word: str) -> int:
        labels = _load(self.params.model, self.device).config.id2label
        w = word.strip().lower()
        for i, label in sorted(labels.items(), key=lambda kv: int(kv[0])):
            if w == label.strip().lower() or w in label_names(label):
                return int(i)
        raise UserError(f"judge 'imagenet': '{word}' is not an ImageNet class name of {self.params.model}")

    def score(self, images: np.ndarray, texts: list[str]) -> np.ndarray:
        p = self.probs(images)
        return np.array([p[i, self.class_index(t)] for i, t in enumerate(texts)])

    def classify(self, images: np.ndarray, candidates: list[str]) -> list[str]:
        p = self.probs(images)
        idx = [self.class_index(c) for c in candidates]
        if self.params.restrict_to_candidates:
            return [candidates[j] for j in p[:, idx].argmax(1).tolist()]
        labels = _load(self.params.model, self.device).config.id2label
        by_index = dict(zip(idx, candidates, strict=True))
        return [by_index.get(int(k), label_names(labels[int(k)])[0]) for k in p.argmax(1).tolist()]

    def topk_hits(self, images: np.ndarray, index: int, k: int = 1) -> np.ndarray:
        """True where class ``index`` is among the ``k`` most probable of all classes (the top-1 /
        top-5 accuracy of Lu et al., 2025, which counts a hit over the full 1,000-way output)."""
        p = self.probs(images)
        if not len(p):
            return np.zeros(0, dtype=bool)
        top = np.argsort(-p, axis=1, kind="stable")[:, :k]
        return (top == index).any(1)

    def detect(self, images: np.ndarray, concept: str) -> np.ndarray:
        """Top-1 over all classes is ``concept``."""
        k = self.class_index(concept)
        return self.probs(images).argmax(1) == k
