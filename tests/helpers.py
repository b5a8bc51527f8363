"""Helpers shared by tests."""

import sys
from pathlib import Path


def write_config(path: Path, **over) -> Path:
    import yaml

    path.write_text(yaml.safe_dump(over, sort_keys=False))
    return path


def eval_learn(*args, cwd=None, env=None, **kw):
    import subprocess

    return subprocess.run([sys.executable, "-m", "evallearn.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, **kw)


def mean_std_extractor(path: Path) -> Path:
    """A TorchScript FID feature extractor: per-channel mean and std of the image."""
    import torch

    class Mean(torch.nn.Module):
        def forward(self, x):
            return torch.cat([x.mean(dim=(2, 3)), x.std(dim=(2, 3))], 1)

    torch.jit.script(Mean()).save(str(path))
    return path


def fake_coco(root: Path, n: int = 6, seed: int = 1, size: int = 16) -> tuple[Path, Path]:
    """A COCO-like folder of ``n`` random val2014 images and its captions CSV: (folder, csv)."""
    import numpy as np
    from PIL import Image

    folder = root / "val2014"
    folder.mkdir()
    rng = np.random.default_rng(seed)
    rows = ["prompt,coco_id"]
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(
            folder / f"COCO_val2014_{i:012d}.jpg")
        rows.append(f"caption {i},{i}")
    cap = root / "coco.csv"
    cap.write_text("\n".join(rows) + "\n")
    return folder, cap


def run_cli(args, monkeypatch, capsys) -> tuple[int, str, str]:
    """Run ``eval-learn ARGS`` in this process through the real entry point: (exit code, stdout, stderr)."""
    from evallearn import cli

    monkeypatch.setattr(sys, "argv", ["eval-learn", *map(str, args)])
    code = 0
    try:
        cli.main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    captured = capsys.readouterr()
    return code, captured.out, captured.err
