"""Resume and locking, exercised on real subprocesses of ``eval-learn run``."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest
from helpers import eval_learn, write_config

from evallearn.store import RunStore


def _config(tmp_path, tiny_pipe_dir, tiny_clip_dir, out):
    return write_config(
        tmp_path / f"{out}.yaml",
        name="resume",
        model=str(tiny_pipe_dir),
        technique={"name": "scale_attention", "params": {"factor": 0.25}},
        concept={"name": "cat", "retain": ["dog", "car", "tree"]},
        metrics=[{"name": "clip_score", "params": {"clip_model": str(tiny_clip_dir), "images_per_prompt": 4,
                                                   "prompt_set": "all"}}],
        sampler={"steps": 2, "batch_size": 2},
        output_dir=str(tmp_path / out),
    )


def _values(results):
    return {k: (m["after"]["value"], m["after"]["ci_low"], m["after"]["ci_high"], m["after"]["n"],
                m["before"]["value"]) for k, m in results["metrics"].items()}


def _run_dir(out):
    dirs = [p for p in out.iterdir() if p.name.startswith("resume-")]
    return dirs[0] if dirs else None


def _kill_when(cfg, out, ready, timeout=240):
    proc = subprocess.Popen([sys.executable, "-m", "evallearn.cli", "run", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    try:
        while time.time() - t0 < timeout:
            if proc.poll() is not None:
                pytest.fail("run finished before it could be killed")
            if ready():
                proc.send_signal(signal.SIGKILL)
                proc.wait()
                return
            time.sleep(0.05)
        pytest.fail("kill point never reached")
    finally:
        if proc.poll() is None:
            proc.kill()


def _count(folder):
    return len(list(folder.glob("*.png"))) if folder.exists() else 0


@pytest.mark.slow
def test_kill_9_then_rerun_gives_identical_results(tmp_path, tiny_pipe_dir, tiny_clip_dir, plugin_path):
    # the uninterrupted reference
    ref_cfg = _config(tmp_path, tiny_pipe_dir, tiny_clip_dir, "ref")
    res = eval_learn("run", ref_cfg)
    assert res.returncode == 0, res.stderr
    ref = json.loads((_run_dir(tmp_path / "ref") / "results.json").read_text())
    assert ref["technique"]["cached"] is False

    out = tmp_path / "killed"
    cfg = _config(tmp_path, tiny_pipe_dir, tiny_clip_dir, "killed")
    # kill 1: in the middle of generating the base model's images
    _kill_when(cfg, out, lambda: 3 <= sum(_count(p / "images") for p in (out / "_base").glob("*")))
    # kill 2: in the middle of generating the erased model's images
    _kill_when(cfg, out, lambda: _run_dir(out) is not None and _count(_run_dir(out) / "images") >= 3)
    run_dir = _run_dir(out)
    assert not (run_dir / "results.json").exists()
    n_before = _count(run_dir / "images")
    assert 3 <= n_before < 16

    res = eval_learn("run", cfg)
    assert res.returncode == 0, res.stderr
    got = json.loads((run_dir / "results.json").read_text())
    assert _values(got) == _values(ref)
    assert got["technique"]["cached"] is True  # the edit was not redone
    written = [e for e in RunStore(run_dir).manifest() if e["event"] == "images_done"][-1]["written"]
    assert written == 16 - n_before  # nothing finished was recomputed


def test_second_concurrent_run_is_refused(tmp_path, tiny_pipe_dir, tiny_clip_dir, plugin_path):
    from evallearn.config import load_config
    from evallearn.runner import prepare

    cfg = _config(tmp_path, tiny_pipe_dir, tiny_clip_dir, "lock")
    run_dir = prepare(load_config(cfg)).run_dir
    first = RunStore(run_dir)
    first.acquire()  # a live run holds the directory
    try:
        res = eval_learn("run", cfg)
        assert res.returncode == 2
        assert "in use by another run" in res.stderr and str(os.getpid()) in res.stderr
        assert not (run_dir / "images").exists() or _count(run_dir / "images") == 0
    finally:
        first.release()
    # once released, the directory can be taken again
    again = RunStore(run_dir)
    again.acquire()
    again.release()
