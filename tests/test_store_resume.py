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


@pytest.mark.parametrize("umask, mode", [(0o022, 0o644), (0o027, 0o640), (0o002, 0o664)])
def test_written_files_take_the_umask_mode(tmp_path, umask, mode):
    import numpy as np

    from evallearn.store import ImageStore, atomic_write_json

    old = os.umask(umask)
    try:
        atomic_write_json(tmp_path / "results.json", {"a": 1})
        store = RunStore(tmp_path / "run")
        store.write_config("name: x\n")
        images = ImageStore(tmp_path / "images")
        images.put("k", np.zeros((4, 4, 3), np.uint8))
        images.put("bad", np.zeros((4, 4, 3), np.uint8), nonfinite={"nonfinite_pixels": 48})
        plain = tmp_path / "plain.txt"
        plain.write_text("x")  # what any other program writing a file gets
    finally:
        os.umask(old)
    assert (plain.stat().st_mode & 0o777) == mode
    for path in (tmp_path / "results.json", tmp_path / "run" / "config.yaml", images.path("k"), images.path("bad"),
                 images.flag_path("bad")):
        assert (path.stat().st_mode & 0o777) == mode, path
    assert not list(tmp_path.rglob("*.tmp"))


def test_timings_keep_the_cost_of_the_attempt_that_did_the_work():
    from evallearn.runner import compute_timings

    def attempt(**phases):
        return [{"event": "start"}] + [{"event": "phase", "name": k, "seconds": s, "work": w}
                                       for k, (s, w) in phases.items()]

    first = attempt(prepare=(1.0, 1), load=(20.0, 0), before=(300.0, 24), technique=(200.0, 1),
                    generate=(130.0, 24), score=(6.0, 24))
    finished_again = attempt(prepare=(1.5, 1), load=(4.0, 0), before=(0.1, 0), technique=(0.5, 0),
                             generate=(0.0, 0), score=(5.0, 0))
    t = compute_timings(first + finished_again)
    # a rerun of a finished run computed nothing: every cost is the first run's
    assert {k: t[k] for k in ("prepare", "load", "before", "technique", "generate", "score")} == {
        "prepare": 1.0, "load": 20.0, "before": 300.0, "technique": 200.0, "generate": 130.0, "score": 6.0}
    assert t["total"] == 657.0 and t["attempts"] == 2

    # killed while generating (no generate event), then resumed: both attempts worked
    killed = attempt(prepare=(1.0, 1), load=(20.0, 0), before=(300.0, 24), technique=(200.0, 1))
    resumed = attempt(prepare=(1.0, 1), load=(18.0, 0), before=(0.2, 0), technique=(0.4, 0),
                      generate=(70.0, 13), score=(6.0, 13))
    t = compute_timings(killed + resumed)
    assert (t["load"], t["before"], t["technique"], t["generate"], t["score"]) == (38.0, 300.0, 200.0, 70.0, 6.0)

    # everything came from shared caches made by another run: what reading them cost
    cached = attempt(prepare=(1.0, 1), load=(5.0, 0), before=(0.3, 0), technique=(0.5, 0), generate=(0.0, 0))
    t = compute_timings(cached + cached)
    assert (t["load"], t["before"], t["technique"]) == (5.0, 0.3, 0.5)
