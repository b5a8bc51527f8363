"""One run sharded (``eval-learn run CONFIG --shard I/N``): the shards make disjoint parts of the
images, the final plain run scores them without generating any, and everything equals the unsharded
run. The toy world with a tiny budget; no Ray needed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from test_suite import main

from evallearn.config import parse_config
from evallearn.errors import UserError
from evallearn.generation import GenRequest
from evallearn.store import RunStore
from evallearn.suite.shard import Shard, parse_shard

CONFIG = {"name": "sharded", "model": "toy", "technique": {"name": "uce", "params": {"guide": "shape"}},
          "concept": {"name": "cross", "retain": ["circle", "square"]},
          "metrics": [{"name": "ua", "params": {"max_prompts": 3}}, {"name": "ira", "params": {"max_prompts": 3}}],
          "sampler": {"steps": 2, "batch_size": 2}}


def _write(tmp_path: Path, out: str) -> Path:
    path = tmp_path / f"{out}.yaml"
    path.write_text(yaml.safe_dump({**CONFIG, "output_dir": str(tmp_path / out)}))
    return path


def _pngs(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in folder.glob("*.png")}


def _written(run_dir: Path, event: str) -> int:
    return sum(e.get("written", 0) for e in map(json.loads, (run_dir / "manifest.jsonl").read_text().splitlines())
               if e["event"] == event)


def test_parse_shard():
    assert parse_shard("2/3") == Shard(2, 3) and str(parse_shard(" 1 / 4 ")) == "1/4"
    for bad in ("0/2", "3/2", "1/0", "1-2", "", "a/b"):
        with pytest.raises(UserError, match="expected I/N with 1 <= I <= N"):
            parse_shard(bad)


def test_shards_partition_whole_batches():
    reqs = [GenRequest(prompt=f"p{i}", seed=i, steps=2 if i < 7 else 3) for i in range(11)]
    parts = [Shard(i, 3).keys(reqs, 2) for i in (1, 2, 3)]
    assert set().union(*parts) == {r.key for r in reqs}
    assert sum(len(p) for p in parts) == len(reqs)  # disjoint
    # batches of 2 within each settings group: [0,1] [2,3] [4,5] [6] | [7,8] [9,10] -> shards 1,2,3,1,2,3
    assert parts[0] == {reqs[i].key for i in (0, 1, 6)}
    assert parts[1] == {reqs[i].key for i in (2, 3, 7, 8)}


def test_two_shards_then_the_final_run_equal_the_unsharded_run(tmp_path, monkeypatch, capsys):
    whole, sharded = _write(tmp_path, "whole"), _write(tmp_path, "sharded")
    assert main(["run", whole], monkeypatch, capsys)[0] == 0
    for i in (1, 2):
        code, stdout, err = main(["run", sharded, "--shard", f"{i}/2"], monkeypatch, capsys)
        assert code == 0, err
        assert f"shard {i}/2: " in stdout and "still missing" in stdout
    assert "0 of the run's images still missing" in stdout
    (run_dir,) = (tmp_path / "sharded").glob("sharded-*")
    assert not (run_dir / "results.json").exists()  # shards score nothing
    records = [json.loads((run_dir / "shards" / f"{i}-of-2.json").read_text()) for i in (1, 2)]
    (whole_dir,) = (tmp_path / "whole").glob("sharded-*")
    n_after = len(_pngs(whole_dir / "images"))
    assert records[0]["after"] > 0 and records[1]["after"] > 0
    assert records[0]["after"] + records[1]["after"] == n_after  # disjoint parts of the run's images
    assert records[1]["missing"] == 0

    code, _, err = main(["run", sharded], monkeypatch, capsys)  # the final step: score what the shards made
    assert code == 0, err
    assert _written(run_dir, "images_done") == 0 and _written(run_dir, "base_images") == 0
    assert run_dir.name == whole_dir.name
    assert _pngs(run_dir / "images") == _pngs(whole_dir / "images")
    (base_s,), (base_w,) = (tmp_path / "sharded" / "_base").iterdir(), (tmp_path / "whole" / "_base").iterdir()
    assert _pngs(base_s / "images") == _pngs(base_w / "images")
    a = json.loads((run_dir / "results.json").read_text())
    b = json.loads((whole_dir / "results.json").read_text())
    assert a["metrics"] == b["metrics"] and a["nonfinite"] == b["nonfinite"]


def test_shards_and_a_whole_run_exclude_each_other(tmp_path, monkeypatch, capsys):
    path = _write(tmp_path, "locked")
    from evallearn.runner import prepare

    run_dir = prepare(parse_config({**CONFIG, "output_dir": str(tmp_path / "locked")})).run_dir
    shard = RunStore(run_dir)
    shard.acquire(shared=True)
    try:
        other_shard = RunStore(run_dir)
        other_shard.acquire(shared=True)  # shards run side by side
        other_shard.release()
        code, _, err = main(["run", path], monkeypatch, capsys)
        assert code == 2 and "is in use by another run (its shards)" in err and len(err.strip().splitlines()) == 1
    finally:
        shard.release()
    whole = RunStore(run_dir)
    whole.acquire()
    try:
        code, _, err = main(["run", path, "--shard", "1/2"], monkeypatch, capsys)
        assert code == 2 and "is in use by another run (pid" in err
    finally:
        whole.release()
    code, _, err = main(["run", path, "--shard", "3/2"], monkeypatch, capsys)
    assert code == 2 and err.strip() == "error: --shard '3/2': expected I/N with 1 <= I <= N, e.g. --shard 1/4"
