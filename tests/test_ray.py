"""``eval-learn bench --executor ray`` on a real local Ray cluster (two CPU workers), the toy world
with a tiny budget: the same numbers as the local executor, and a dead address refused in one line.

CPU images depend on torch's thread count, so both executors run with one thread per cell (the
Ray executor gives a CPU cell ``num_cpus`` = 1 CPU and as many torch threads)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_suite import main, write_suite

ray = pytest.importorskip("ray", reason="ray is not installed (pip install -c constraints.txt -e '.[dev]')")

SUITE = {
    "name": "ray2x2",
    "model": "toy",
    "techniques": [{"name": "uce", "params": {"guide": "shape"}, "grid": {"lamb": [0.5, 1.0]}}],
    "concepts": ["circle", "cross"],
    "metrics": [{"name": "ua", "params": {"max_prompts": 2}}, {"name": "ira", "params": {"max_prompts": 2}}],
    "sampler": {"steps": 2, "batch_size": 4},
}


@pytest.fixture(scope="module")
def cluster():
    """A local Ray cluster with 2 CPUs (so two one-CPU cells at a time), for this module."""
    ray.init(num_cpus=2, include_dashboard=False, configure_logging=False)
    yield
    ray.shutdown()


def _metrics(out: Path) -> dict[str, dict]:
    record = json.loads((out / "suite.json").read_text())
    res = {}
    for c in record["cells"]:
        assert c["status"] == "done", c
        res[c["id"]] = json.loads((out / c["run_dir"] / "results.json").read_text())["metrics"]
    return res


def test_suite_through_ray_equals_the_local_executor(cluster, tmp_path, monkeypatch, capsys):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        local = write_suite(tmp_path, {**SUITE, "output_dir": str(tmp_path / "local")}, "local.yaml")
        code, _, err = main(["bench", local], monkeypatch, capsys)
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    remote = write_suite(tmp_path, {**SUITE, "output_dir": str(tmp_path / "ray")}, "ray.yaml")
    code, stdout, err = main(["bench", remote, "--executor", "ray"], monkeypatch, capsys)
    assert code == 0, err
    assert "4 done, 0 cached" in stdout
    a, b = _metrics(tmp_path / "local"), _metrics(tmp_path / "ray")
    assert sorted(a) == sorted(b) and len(a) == 4
    for cell in a:
        assert a[cell] == b[cell], cell  # every value, CI, n and per-image record
        assert b[cell]["ua"]["after"]["n"] == 2
    # the shared base images were made once among the Ray workers
    (base,) = (tmp_path / "ray" / "_base").iterdir()
    made = sum(e.get("written", 0) for d in (tmp_path / "ray").iterdir() if (d / "manifest.jsonl").exists()
               for e in map(json.loads, (d / "manifest.jsonl").read_text().splitlines())
               if e["event"] == "base_images")
    assert made == len(list((base / "images").glob("*.png")))
    # a rerun through Ray finds every cell finished
    code, stdout, err = main(["bench", remote, "--executor", "ray"], monkeypatch, capsys)
    assert code == 0 and "0 done, 4 cached" in stdout, err


def test_a_ray_address_that_does_not_answer_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    path = write_suite(tmp_path, SUITE)
    code, stdout, err = main(["bench", path, "--executor", "ray", "--address", "127.0.0.1:1"], monkeypatch, capsys)
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --address '127.0.0.1:1': the Ray cluster does not "
                                                   "answer"), err
    assert not (tmp_path / "out").exists()  # refused before any cell ran
    code, _, err = main(["bench", path, "--executor", "ray", "--address", "nonsense"], monkeypatch, capsys)
    assert code == 2 and err.strip().startswith("error: --address 'nonsense': expected HOST:PORT"), err


def test_a_run_in_two_shards_on_ray_equals_the_run_in_one(cluster, tmp_path, monkeypatch, capsys):
    import torch
    from test_shard import _pngs, _write

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the Ray tasks (one CPU each)
    try:
        code, _, err = main(["run", _write(tmp_path, "whole")], monkeypatch, capsys)
        assert code == 0, err
    finally:
        torch.set_num_threads(threads)
    code, stdout, err = main(["run", _write(tmp_path, "sharded"), "--shards", "2"], monkeypatch, capsys)
    assert code == 0, err
    assert "results:" in stdout
    (a,), (b,) = (tmp_path / "sharded").glob("sharded-*"), (tmp_path / "whole").glob("sharded-*")
    records = [json.loads((a / "shards" / f"{i}-of-2.json").read_text()) for i in (1, 2)]
    assert all(r["after"] > 0 for r in records)  # both shards made part of the images
    assert sum(r["after"] for r in records) == len(_pngs(b / "images"))
    assert _pngs(a / "images") == _pngs(b / "images")
    ra, rb = (json.loads((d / "results.json").read_text()) for d in (a, b))
    assert ra["metrics"] == rb["metrics"]


def test_cells_the_cluster_cannot_place_are_refused_before_any_runs(cluster, tmp_path):
    from evallearn.config import parse_config
    from evallearn.errors import UserError
    from evallearn.suite.cells import Cell
    from evallearn.suite.ray_executor import RayExecutor

    def cell(device):
        cfg = parse_config({"concept": {"name": "cross"}, "device": device, "output_dir": str(tmp_path)})
        return Cell(f"on-{device}", cfg, "0" * 12)

    with pytest.raises(UserError, match=r"cell 'on-cuda' asks Ray for 1 GPUs; the cluster has 0"):
        RayExecutor().run([cell("cpu"), cell("cuda")])
    with pytest.raises(UserError, match=r"device 'cuda:1': on Ray each task is given its own GPU"):
        RayExecutor().run([cell("cuda:1")])
    with pytest.raises(UserError, match=r"asks Ray for 3 CPUs; the cluster has 2"):
        RayExecutor(num_cpus=3).run([cell("cpu")])
    assert not list(tmp_path.iterdir())  # nothing ran
