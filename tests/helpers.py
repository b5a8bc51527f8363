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
