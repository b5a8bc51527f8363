"""The toy world's judge: a small CNN with one head per attribute.

Heads: ``shape``, ``colour``, ``style``, ``background``; each outputs class probabilities in the
order of :data:`SHAPES`, :data:`COLOURS`, :data:`STYLES`, :data:`BACKGROUNDS`. It is trained on
fresh renders with noise and blur augmentation so that it stays a sound judge of the slightly
blurry images a diffusion model makes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from .render import CLASSES, HEADS, IMAGE_SIZE

CONFIG_NAME = "config.json"
WEIGHTS_NAME = "model.safetensors"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class ToyClassifier(nn.Module):
    """6-conv CNN (16/32/64 channels, two max-pools, global average pool) with linear heads."""

    def __init__(self, widths: tuple[int, int, int] = (16, 32, 64), image_size: int = IMAGE_SIZE):
        super().__init__()
        a, b, c = widths
        self.widths = tuple(widths)
        self.image_size = int(image_size)
        self.features = nn.Sequential(
            _block(3, a), _block(a, a), nn.MaxPool2d(2),
            _block(a, b), _block(b, b), nn.MaxPool2d(2),
            _block(b, c), _block(c, c), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )  # fmt: skip
        self.heads = nn.ModuleDict({h: nn.Linear(c, len(CLASSES[h])) for h in HEADS})

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """``x``: float ``[N, 3, S, S]`` in [0, 1]; returns logits per head."""
        z = self.features((x - 0.5) / 0.25)
        return {h: head(z) for h, head in self.heads.items()}

    def to_input(self, images) -> torch.Tensor:
        """Accept uint8 ``[N,H,W,3]`` arrays (or one ``[H,W,3]``) or float ``[N,3,H,W]`` in [0, 1]."""
        device = next(self.parameters()).device
        if isinstance(images, np.ndarray):
            arr = images
            if arr.ndim == 3:
                arr = arr[None]
            if arr.dtype == np.uint8:
                x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float() / 255.0
            else:  # float HWC in [0, 1], as returned by diffusers with output_type="np"
                x = torch.from_numpy(np.ascontiguousarray(arr)).permute(0, 3, 1, 2).float()
        elif isinstance(images, torch.Tensor):
            x = images
            if x.ndim == 3:
                x = x[None]
            x = x.float() / 255.0 if images.dtype == torch.uint8 else x.float()
        else:  # a list of PIL images
            x = torch.from_numpy(np.stack([np.asarray(im.convert("RGB")) for im in images])).permute(0, 3, 1, 2)
            x = x.float() / 255.0
        x = x.to(device)
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear", antialias=True)
        return x.clamp(0, 1)

    @torch.no_grad()
    def predict(self, images, batch_size: int = 256) -> dict[str, torch.Tensor]:
        """Class probabilities per head, ``{head: [N, n_classes]}`` (on CPU)."""
        was_training = self.training
        self.eval()
        x = self.to_input(images)
        out: dict[str, list[torch.Tensor]] = {h: [] for h in HEADS}
        for i in range(0, x.shape[0], batch_size):
            logits = self(x[i : i + batch_size])
            for h in HEADS:
                out[h].append(logits[h].softmax(-1).cpu())
        self.train(was_training)
        return {h: torch.cat(v) for h, v in out.items()}

    def save(self, path: str | Path) -> Path:
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        config = {
            "widths": list(self.widths),
            "image_size": self.image_size,
            "heads": {h: list(CLASSES[h]) for h in HEADS},
        }
        (path / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
        state = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        save_file(state, str(path / WEIGHTS_NAME))
        return path

    @classmethod
    def load(cls, path: str | Path, device: str | torch.device = "cpu") -> ToyClassifier:
        from safetensors.torch import load_file

        path = Path(path)
        config = json.loads((path / CONFIG_NAME).read_text())
        for h in HEADS:
            if tuple(config["heads"][h]) != CLASSES[h]:
                raise ValueError(f"classifier at {path} was trained for other {h} classes: {config['heads'][h]}")
        model = cls(tuple(config["widths"]), config["image_size"])
        model.load_state_dict(load_file(str(path / WEIGHTS_NAME)))
        return model.to(device).eval()


def augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Gaussian noise (std up to 0.15) and, 30 % of the time, a 3x3 blur; ``x`` in [0, 1]."""
    n = x.shape[0]
    blur = torch.rand(n, generator=generator) < 0.3
    if blur.any():
        kernel = torch.tensor([[1.0, 2.0, 1.0], [2.0, 4.0, 2.0], [1.0, 2.0, 1.0]]) / 16
        kernel = kernel.expand(3, 1, 3, 3).contiguous()
        xb = F.conv2d(F.pad(x[blur], (1, 1, 1, 1), mode="replicate"), kernel, groups=3)
        x = x.clone()
        x[blur] = xb
    std = torch.rand(n, 1, 1, 1, generator=generator) * 0.15
    x = x + std * torch.randn(x.shape, generator=generator)
    # small global brightness/contrast shifts, as VAE decodes produce
    gain = 1 + 0.1 * (torch.rand(n, 1, 1, 1, generator=generator) - 0.5)
    x = (x - 0.5) * gain + 0.5
    return x.clamp(0, 1)
