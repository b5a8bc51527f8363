import pytest
from helpers import eval_learn, write_config

from evallearn import registry
from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.runner import prepare


def test_builtins_come_from_entry_points():
    assert "free_run" in registry.techniques.names()
    assert "clip_score" in registry.metrics.names()
    assert registry.techniques.get("free_run").name == "free_run"


def test_unknown_name_lists_known():
    with pytest.raises(UserError, match="unknown technique 'esdd'; known: .*free_run"):
        registry.techniques.get("esdd")


def test_outside_package_is_discovered_through_entry_points(plugin_path, tmp_path):
    assert "scale_attention" in registry.techniques.names()
    cls = registry.techniques.get("scale_attention")
    assert cls.__module__ == "evallearn_testplugin"
    # and the CLI of a fresh process sees it too, with its parameters
    res = eval_learn("techniques", env=None)
    assert res.returncode == 0 and "scale_attention" in res.stdout and "factor" in res.stdout, res.stdout


def test_incompatible_combination_is_refused_before_loading(plugin_path, tiny_pipe_dir, tmp_path, monkeypatch):
    import evallearn.runner as runner

    def boom(*a, **k):
        raise AssertionError("weights were loaded")

    monkeypatch.setattr(runner, "load_pipeline", boom)
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat", "kind": "object"},
                        "technique": {"name": "nudity_only"}, "output_dir": str(tmp_path)})
    with pytest.raises(UserError) as e:
        prepare(cfg)
    msg = str(e.value)
    assert "technique 'nudity_only'" in msg and "concept kind 'object'" in msg
    # the concept kind alone is not enough: the model must be one it supports (declared sd2 only)
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "nudity", "kind": "nudity"},
                        "technique": {"name": "nudity_only"}, "output_dir": str(tmp_path)})
    with pytest.raises(UserError, match="model sd1 not supported"):
        prepare(cfg)
    path = write_config(tmp_path / "c.yaml", model=str(tiny_pipe_dir), concept={"name": "cat"},
                        technique={"name": "nudity_only"})
    res = eval_learn("run", path)
    assert res.returncode == 2 and "incompatible run" in res.stderr
    assert not (tmp_path / "runs").exists()


def test_model_folder_that_is_not_a_pipeline(tmp_path):
    from evallearn.models.loading import resolve_model

    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="is not a diffusers pipeline"):
        resolve_model(str(tmp_path / "empty"))
    with pytest.raises(UserError, match="does not exist"):
        resolve_model(str(tmp_path / "missing"))


def test_hub_id_missing_offline_says_how_to_get_it():
    from evallearn.models.loading import resolve_model

    with pytest.raises(UserError, match="not in the local Hugging Face cache.*hf download"):
        resolve_model("CompVis/stable-diffusion-v1-4")


def test_tiny_pipeline_is_detected_as_sd1(tiny_pipe_dir):
    from evallearn.models.loading import resolve_model

    info = resolve_model(str(tiny_pipe_dir))
    assert info.tags == {"sd1"} and info.default_size == 64
