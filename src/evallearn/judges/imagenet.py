"""An ImageNet-1k classifier through transformers: ResNet-50 (He et al., CVPR 2016, "Deep
Residual Learning for Image Recognition"), hub id ``microsoft/resnet-50``; no torchvision.

The object-erasure papers (ESD, Gandikota et al., ICCV 2023; UCE; UnlearnDiffAtk on Imagenette)
count an image as showing the class when it is the classifier's **top-1** prediction over all
1,000 classes. ``classify`` does exactly that and maps the predicted label to a candidate word
when one of the label's comma-separated names equals it (``"garbage truck"`` matches
``"garbage truck, dustcart"``); with ``restrict_to_candidates`` it picks the best candidate
instead. Preprocessing is the standard ImageNet evaluation transform (resize the short side to
224/0.875 = 256 px bicubic, centre-crop 224, ImageNet mean/std), done with PIL; ``resize`` and
``resample`` change it (torchvision's ``IMAGENET1K_V2`` weights expect 232 px bilinear).

``model`` may also be a torchvision ResNet state dict (a ``.pth``/``.pt``/``.safetensors`` file,
such as torchvision's ``resnet50-11ad3fa6.pth``, the ``IMAGENET1K_V2`` weights Lu et al., 2025 score
with): it is mapped onto the same architecture in transformers (torchvision's ResNet v1.5 puts the
stride in the 3x3 convolution, as transformers' default does). Such a file carries no class names,
so only class indices can be asked for.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Literal

import numpy as np
from pydantic import Field

from ..components import Params
from ..errors import UserError
from ._hub import model_folder
from .base import Judge

MEAN = np.array([0.485, 0.456, 0.406], dtype=np.float32)
STD = np.array([0.229, 0.224, 0.225], dtype=np.float32)


STATE_DICT_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors")


def torchvision_to_transformers(state: dict):
    """A transformers ``ResNetForImageClassification`` holding a torchvision ResNet (bottleneck)
    state dict; depths and widths are read from the tensors' shapes."""
    import re

    from transformers import ResNetConfig, ResNetForImageClassification

    blocks: dict[int, set[int]] = {}
    for k in state:
        m = re.match(r"layer(\d+)\.(\d+)\.", k)
        if m:
            blocks.setdefault(int(m[1]), set()).add(int(m[2]))
    if "conv1.weight" not in state or "fc.weight" not in state or not blocks:
        raise UserError("judge 'imagenet': the state dict is not a torchvision ResNet (needs conv1, layer1.., fc)")
    stages = sorted(blocks)
    if any(f"layer{L}.0.conv3.weight" not in state for L in stages):
        raise UserError("judge 'imagenet': only bottleneck ResNets (ResNet-50 and deeper) are supported")
    n_cls = int(state["fc.weight"].shape[0])
    cfg = ResNetConfig(embedding_size=int(state["conv1.weight"].shape[0]), layer_type="bottleneck",
                       hidden_sizes=[int(state[f"layer{L}.0.conv3.weight"].shape[0]) for L in stages],
                       depths=[len(blocks[L]) for L in stages], num_labels=n_cls,
                       id2label={i: f"class {i}" for i in range(n_cls)},
                       label2id={f"class {i}": i for i in range(n_cls)})
    model = ResNetForImageClassification(cfg)

    def target(k: str) -> str:
        if k.startswith(("conv1.", "bn1.")):
            return "resnet.embedder.embedder." + ("convolution." if k.startswith("conv1.") else "normalization.") \
                + k.split(".", 1)[1]
        if k.startswith("fc."):
            return "classifier.1." + k.split(".", 1)[1]
        m = re.match(r"layer(\d+)\.(\d+)\.(conv|bn|downsample\.)(\d+)\.(.+)", k)
        if not m:
            raise UserError(f"judge 'imagenet': unexpected key '{k}' in the torchvision state dict")
        L, b, part, j, rest = m.groups()
        where = f"resnet.encoder.stages.{stages.index(int(L))}.layers.{b}."
        if part == "downsample.":
            return where + ("shortcut.convolution." if j == "0" else "shortcut.normalization.") + rest
        return where + f"layer.{int(j) - 1}." + ("convolution." if part == "conv" else "normalization.") + rest

    mapped = {target(k): v for k, v in state.items()}
    missing, unexpected = model.load_state_dict(mapped, strict=False)
    missing = [k for k in missing if not k.endswith("num_batches_tracked")]
    if missing or unexpected:
        raise UserError(f"judge 'imagenet': the state dict does not fit a ResNet: missing {missing[:3]}, "
                        f"unexpected {list(unexpected)[:3]}")
    return model


def _read_state_dict(path):
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    import torch

    state = torch.load(str(path), map_location="cpu", weights_only=True)
    return state.get("state_dict", state) if isinstance(state, dict) else state


@lru_cache(maxsize=2)
def _load(ref: str, device: str):
    from pathlib import Path

    from transformers import AutoModelForImageClassification

    path = Path(ref).expanduser()
    if path.suffix in STATE_DICT_SUFFIXES:
        if not path.is_file():
            raise UserError(f"judge 'imagenet': state dict {path} does not exist")
        return torchvision_to_transformers(_read_state_dict(path)).to(device).eval()
    folder = model_folder(ref, "imagenet", "classifier")
    try:
        model = AutoModelForImageClassification.from_pretrained(str(folder), local_files_only=True)
    except OSError as exc:
        raise UserError(f"judge 'imagenet': cannot load {folder}: {str(exc).splitlines()[0]}") from None
    return model.to(device).eval()


def preprocess(images: np.ndarray, size: int = 224, crop_pct: float = 0.875, resize: int | None = None,
               resample: str = "bicubic") -> np.ndarray:
    """Resize the short side to ``resize`` (default size / crop_pct), centre-crop ``size``, normalise."""
    from PIL import Image

    short = int(resize or round(size / crop_pct))
    method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR}[resample]
    out = []
    for img in images:
        im = Image.fromarray(img)
        w, h = im.size
        scale = short / min(w, h)
        im = im.resize((max(short, round(w * scale)), max(short, round(h * scale))), method)
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
        #: short side before the 224 px centre crop (torchvision IMAGENET1K_V2: 232)
        resize: int = Field(256, ge=224)
        #: resampling of that resize (torchvision IMAGENET1K_V2: bilinear)
        resample: Literal["bicubic", "bilinear"] = "bicubic"

    @classmethod
    def models_used(cls, params=None):
        return [(params or cls.Params()).model]

    def weights_fingerprint(self) -> str:
        """The content hash of the classifier (a state-dict file or a transformers folder); it
        enters cache keys."""
        from pathlib import Path

        from ..models.loading import file_fingerprint, folder_fingerprint

        path = Path(self.params.model).expanduser()
        if path.suffix in STATE_DICT_SUFFIXES:
            if not path.is_file():
                raise UserError(f"judge 'imagenet': state dict {path} does not exist")
            return file_fingerprint(path)
        return folder_fingerprint(model_folder(self.params.model, "imagenet", "classifier"))

    def probs(self, images: np.ndarray) -> np.ndarray:
        import torch

        model = _load(self.params.model, self.device)
        out = []
        with torch.no_grad():
            for i in range(0, len(images), self.params.batch_size):
                batch = preprocess(images[i : i + self.params.batch_size], resize=self.params.resize,
                                   resample=self.params.resample)
                x = torch.from_numpy(batch).to(self.device)
                out.append(torch.softmax(model(pixel_values=x).logits.float(), -1).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, 0))

    def class_index(self, word: str) -> int:
        labels = _load(self.params.model, self.device).config.id2label
        w = word.strip().lower()
        for i, label in sorted(labels.items(), key=lambda kv: int(kv[0])):
            if w == label.strip().lower() or w in label_names(label):
                return int(i)
        raise UserError(f"judge 'imagenet': '{word}' is not an ImageNet class name of {self.params.model}"
                        + (" (a torchvision state dict has no class names: only the paper's ten objects, whose "
                           "class indices are built in, can be scored)" if labels.get(0) == "class 0" else ""))

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
