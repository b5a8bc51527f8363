import shutil

from helpers import eval_learn, write_config

from evallearn.models.loading import folder_fingerprint, resolve_model


def test_version_and_listings():
    res = eval_learn("--version")
    assert res.returncode == 0 and res.stdout.startswith("eval-learn ")
    res = eval_learn("models")
    assert res.returncode == 0
    assert "uce" in res.stdout and "clip_score" in res.stdout and "clip-vit-large-patch14" in res.stdout
    res = eval_learn("metrics")
    assert res.returncode == 0 and "images_per_prompt" in res.stdout


def test_validate_reports_spec_and_request_count(tiny_pipe_dir, tiny_clip_dir, tmp_path):
    cfg = write_config(tmp_path / "c.yaml", model=str(tiny_pipe_dir), concept={"name": "cat", "retain": ["dog"]},
                       metrics=[{"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir)}}])
    res = eval_learn("validate", cfg, "--set", "metrics[0]=x")
    assert res.returncode == 2  # a key path with brackets is not a mapping key
    res = eval_learn("validate", cfg, "--set", "sampler.steps=5")
    assert res.returncode == 0 and "ok: spec" in res.stdout and "4 images" in res.stdout, res.stderr


def test_retrained_weights_change_the_fingerprint(tiny_pipe_dir, tmp_path):
    from evallearn.models.tiny import save_tiny_pipeline

    copy = tmp_path / "pipe"
    shutil.copytree(tiny_pipe_dir, copy)
    before = resolve_model(str(copy)).fingerprint
    assert before == resolve_model(str(tiny_pipe_dir)).fingerprint  # content, not path
    save_tiny_pipeline(copy, seed=1)
    folder_fingerprint.cache_clear()
    assert resolve_model(str(copy)).fingerprint != before


def test_compare_tabulates_runs(tmp_path):
    import json

    def result(name, tech, value, before):
        m = {"after": {"value": value, "higher_is_better": True}, "before": {"value": before}, "delta": value - before}
        return {"run": {"name": name}, "technique": {"name": tech}, "config": {"concept": {"name": "circle"}},
                "model": {"ref": "toy"}, "metrics": {"ua": m}}

    for name, tech, v in (("a", "uce", 0.75), ("b", "esd", 0.5)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(result(name, tech, v, 0.25)))
    res = eval_learn("compare", tmp_path)
    assert res.returncode == 0, res.stderr
    assert "0.750" in res.stdout and "+0.500" in res.stdout and "+0.250" in res.stdout and "esd" in res.stdout
    res = eval_learn("compare", tmp_path / "missing")
    assert res.returncode == 2 and "neither a results.json nor a folder" in res.stderr


def test_command_line_usage_errors_are_one_error_line_and_exit_2():
    # typer >= 0.20 raises its own copies of click's usage errors; they once escaped as a traceback
    for args, needle in ((("toy", "show", "--model", "x"), "No such option: --model"),
                         (("run",), "Missing argument 'config'"),
                         (("toy", "show", "--per-shape", "abc"), "'--per-shape'")):
        res = eval_learn(*args)
        assert res.returncode == 2, (args, res.stderr)
        assert needle in res.stderr and "Traceback" not in res.stderr, res.stderr
