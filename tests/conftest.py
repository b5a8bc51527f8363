import os
import sys
from pathlib import Path

import pytest

TESTS = Path(__file__).parent
PLUGIN_DIR = TESTS / "plugin_pkg"


def pytest_configure(config):
    # Never reach for the network: a mistaken hub id must fail fast.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HOME", str(Path(config.rootpath) / ".pytest_cache" / "hf_home"))
    os.environ.setdefault("TORCH_HOME", str(Path(config.rootpath) / ".pytest_cache" / "torch_home"))
    os.environ["TRANSFORMERS_VERBOSITY"] = "error"
    os.environ["DIFFUSERS_VERBOSITY"] = "error"


@pytest.fixture(scope="session")
def tiny_pipe_dir(tmp_path_factory):
    from evallearn.models.tiny import save_tiny_pipeline

    return save_tiny_pipeline(tmp_path_factory.mktemp("models") / "tiny_pipe")


@pytest.fixture(scope="module")
def pipe(tiny_pipe_dir):
    """The tiny pipeline loaded once per test module (modules may override it)."""
    from evallearn.models.loading import load_pipeline, resolve_model

    return load_pipeline(resolve_model(str(tiny_pipe_dir)))


@pytest.fixture(scope="session")
def tiny_clip_dir(tmp_path_factory):
    from evallearn.models.tiny import save_tiny_clip

    return save_tiny_clip(tmp_path_factory.mktemp("models") / "tiny_clip")


@pytest.fixture
def plugin_path(monkeypatch):
    """Put the test plugin (a dist-info with entry points) on sys.path and PYTHONPATH."""
    from evallearn import registry

    monkeypatch.syspath_prepend(str(PLUGIN_DIR))
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(PLUGIN_DIR), os.environ.get("PYTHONPATH", "")]))
    for reg in registry.ALL.values():
        reg.refresh()
    yield PLUGIN_DIR
    for reg in registry.ALL.values():
        reg.refresh()
        for name in ("scale_attention", "nudity_only"):
            reg.unregister(name)
    sys.modules.pop("evallearn_testplugin", None)

