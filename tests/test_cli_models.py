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
