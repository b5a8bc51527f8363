import pytest
from helpers import eval_learn, write_config

from evallearn.config import RunConfig, apply_overrides, load_config, parse_config, spec_hash
from evallearn.errors import UserError

BASE = {"concept": {"name": "cat"}}


def err(data) -> str:
    with pytest.raises(UserError) as e:
        parse_config(data)
    return str(e.value)


def test_unknown_top_level_key_is_named():
    assert "unknown key 'metrix'" in err({**BASE, "metrix": []})


def test_misspelled_nested_key_is_named():
    assert "unknown key 'sampler.stepz'" in err({**BASE, "sampler": {"stepz": 3}})
    assert "unknown key 'concept.synonym'" in err({"concept": {"name": "cat", "synonym": ["kitty"]}})


def test_bad_value_and_missing_key_are_named():
    assert "'sampler.steps'" in err({**BASE, "sampler": {"steps": 0}})
    assert "missing required key 'concept'" in err({})
    assert "'metrics[1].name'" in err({**BASE, "metrics": ["clip_score", {"params": {}}]})


def test_overrides_apply_and_are_validated(tmp_path):
    path = write_config(tmp_path / "c.yaml", **BASE)
    cfg = load_config(path, ["sampler.steps=7", "concept.retain=[dog, car]", "seed=3"])
    assert cfg.sampler.steps == 7 and cfg.concept.retain == ("dog", "car") and cfg.seed == 3
    with pytest.raises(UserError, match="unknown key 'sampler.stepz'"):
        load_config(path, ["sampler.stepz=7"])
    with pytest.raises(UserError, match="expected KEY=VALUE"):
        load_config(path, ["sampler.steps"])
    assert apply_overrides({"a": {"b": 1}}, ["a.c=2"]) == {"a": {"b": 1, "c": 2}}


def test_spec_hash_is_stable_and_ignores_output_dir():
    a = RunConfig.model_validate({**BASE, "output_dir": "x"})
    b = RunConfig.model_validate({**BASE, "output_dir": "y"})
    c = RunConfig.model_validate({**BASE, "seed": 1})
    assert spec_hash(a) == spec_hash(b) != spec_hash(c)
    assert len(spec_hash(a)) == 12


def test_config_file_errors(tmp_path):
    with pytest.raises(UserError, match="config file not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(UserError, match="not valid YAML"):
        load_config(bad)


def test_cli_config_error_is_one_line_exit_2(tmp_path):
    path = write_config(tmp_path / "c.yaml", **BASE, techniqe={"name": "free_run"})
    res = eval_learn("validate", path)
    assert res.returncode == 2
    lines = [line for line in res.stderr.strip().splitlines() if line.strip()]
    assert len(lines) == 1 and "unknown key 'techniqe'" in lines[0], res.stderr


def test_technique_params_are_checked_by_the_component(tiny_pipe_dir, tmp_path, plugin_path):
    from evallearn.runner import prepare

    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat"},
                        "technique": {"name": "scale_attention", "params": {"factr": 2}}})
    with pytest.raises(UserError, match="unknown key 'technique.params.factr'"):
        prepare(cfg)
    cfg = parse_config({"model": str(tiny_pipe_dir), "concept": {"name": "cat"},
                        "technique": {"name": "scale_attention"}, "output_dir": str(tmp_path)})
    plan = prepare(cfg)
    # the resolved config carries the defaults, so they are part of the spec hash
    assert plan.config.technique.params == {"factor": 0.5}
