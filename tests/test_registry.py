import os

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


# -- typed registry: collisions, base classes, attacks, commands -----------------------------------

def _dist(root, name, entry_points: str, module: str | None = None):
    """A fake installed distribution (dist-info with entry points, optional module) under ``root``."""
    info = root / f"{name}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module is not None:
        (root / f"{name}.py").write_text(module)
    return root


@pytest.fixture
def fake_dists(tmp_path, monkeypatch):
    """Put ``tmp_path/site`` on sys.path; the test writes dists there; registries re-read."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    for reg in registry.ALL.values():
        reg.refresh()
    yield site
    for reg in registry.ALL.values():
        reg.refresh()
    registry.commands.refresh()


def test_two_entry_points_with_one_name_are_refused_naming_both(fake_dists):
    _dist(fake_dists, "evl_a", "[evallearn.techniques]\ndupe = evl_a:T\n", "")
    _dist(fake_dists, "evl_b", "[evallearn.techniques]\ndupe = evl_b:T\n", "")
    assert "dupe" in registry.techniques.names()
    with pytest.raises(UserError) as e:
        registry.techniques.get("dupe")
    msg = str(e.value)
    assert "\n" not in msg
    assert "'evl_a:T' from evl_a 0.1" in msg and "'evl_b:T' from evl_b 0.1" in msg
    # a collision with a built-in is refused the same way
    _dist(fake_dists, "evl_c", "[evallearn.techniques]\nuce = evl_c:UCE\n", "")
    registry.techniques.refresh()
    with pytest.raises(UserError, match="technique 'uce' is declared by two entry points.*evl_c:UCE"):
        registry.techniques.get("uce")


def test_an_entry_that_is_not_a_subclass_of_the_base_is_refused(fake_dists):
    _dist(fake_dists, "evl_wrong", "[evallearn.metrics]\nnot_a_metric = evl_wrong:Thing\n"
                                   "[evallearn.attacks]\nnot_an_attack = evl_wrong:Thing\n",
          "class Thing:\n    pass\n")
    with pytest.raises(UserError, match=r"metric 'not_a_metric' \('evl_wrong:Thing' from evl_wrong 0.1\) is not a "
                                        r"subclass of evallearn.metrics.base.Metric"):
        registry.metrics.get("not_a_metric")
    with pytest.raises(UserError, match="attack 'not_an_attack' .* is not a subclass of evallearn.attacks.base.Attack"):
        registry.attacks.get("not_an_attack")
    # a technique class (a Component, but not a Metric) is refused as a metric too
    _dist(fake_dists, "evl_wrong2", "[evallearn.metrics]\nfree = evallearn.techniques.free_run:FreeRun\n")
    registry.metrics.refresh()
    with pytest.raises(UserError, match="is not a subclass of evallearn.metrics.base.Metric"):
        registry.metrics.get("free")


def test_register_refuses_a_taken_name_and_a_wrong_base():
    from evallearn.techniques.base import Technique

    class Other(Technique):
        pass

    with pytest.raises(UserError, match="technique 'uce' is already declared by the entry point"):
        registry.techniques.register("uce")(Other)
    with pytest.raises(UserError, match="is not a subclass of evallearn.techniques.base.Technique"):
        registry.techniques.register("plain")(object)
    try:
        registry.techniques.register("other_one")(Other)
        assert registry.techniques.get("other_one") is Other and Other.name == "other_one"
        registry.techniques.register("other_one")(Other)  # the same object again is fine

        class Third(Technique):
            pass

        with pytest.raises(UserError, match="'other_one' is already registered"):
            registry.techniques.register("other_one")(Third)
    finally:
        registry.techniques.unregister("other_one")


def test_attacks_come_from_entry_points():
    from evallearn.attacks import get_attack
    from evallearn.attacks.base import Attack

    assert {"ring_a_bell", "mma_diffusion", "p4d"} <= set(registry.attacks.names())
    cls = get_attack("p4d")
    assert issubclass(cls, Attack) and cls.name == "p4d" and cls.__name__ == "P4D"
    with pytest.raises(UserError, match="unknown attack 'nope'; known: .*ring_a_bell"):
        get_attack("nope")


def test_builtin_commands_come_from_the_cli_group():
    assert {"toy", "sae", "probe", "train-latent-classifier"} <= set(registry.commands.names())
    res = eval_learn("--help")
    assert res.returncode == 0
    for name in ("toy", "sae", "probe", "train-latent-classifier", "run", "compare"):
        assert name in res.stdout, name
    res = eval_learn("toy", "--help")
    assert res.returncode == 0 and "train" in res.stdout and "show" in res.stdout
    assert "install-completion" not in res.stdout


def test_a_plugin_adds_a_command(plugin_path):
    registry.commands.refresh()
    try:
        assert {"hello", "shout"} <= set(registry.commands.names())
    finally:
        registry.commands.refresh()
    res = eval_learn("hello", "greet", "--name", "plugin")
    assert res.returncode == 0 and res.stdout.strip() == "hello, plugin", res.stderr
    res = eval_learn("hello", "count", "3")
    assert res.returncode == 0 and res.stdout.strip() == "1 2 3", res.stderr
    res = eval_learn("shout", "quiet")
    assert res.returncode == 0 and res.stdout.strip() == "QUIET", res.stderr
    assert "hello" in eval_learn("--help").stdout


def test_a_command_whose_import_fails_is_a_visible_error(fake_dists):
    _dist(fake_dists, "evl_broken", "[evallearn.cli]\nbroken = evl_broken:app\n",
          "import evallearn_no_such_module  # noqa\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_dists), os.environ.get("PYTHONPATH", "")])}
    res = eval_learn("broken", "train", "--x", "1", env=env)
    assert res.returncode == 2
    assert res.stderr.strip().splitlines() == [
        "error: command 'broken' is unavailable: cannot load evl_broken:app (ModuleNotFoundError: "
        "No module named 'evallearn_no_such_module')"], res.stderr
    res = eval_learn("--help", env=env)  # still listed, with the reason, and the other commands work
    assert res.returncode == 0 and "broken" in res.stdout and "unavailable" in res.stdout
    res = eval_learn("--version", env=env)
    assert res.returncode == 0 and res.stdout.startswith("eval-learn ")


def test_a_plugin_command_may_not_shadow_a_builtin(fake_dists):
    _dist(fake_dists, "evl_shadow", "[evallearn.cli]\nrun = evl_shadow:run\n", "def run():\n    print('shadow')\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(fake_dists), os.environ.get("PYTHONPATH", "")])}
    res = eval_learn("run", "x.yaml", env=env)
    assert res.returncode == 2 and "shadow" not in res.stdout
    assert "command 'run' is unavailable: the entry point evl_shadow:run clashes with the built-in" in res.stderr
