"""Many processes writing one output folder (suite cells on Ray workers, shards of one run):
nothing is corrupted and shared work (base-model images, cache entries) is done once.

Real processes (``multiprocessing`` with ``spawn``), racing on real files."""

import json
import multiprocessing as mp
import os
import signal
import time
from pathlib import Path

import numpy as np

from evallearn.cache import Cache
from evallearn.store import ImageStore, KeyLocks

CTX = mp.get_context("spawn")


def _image(key: str) -> np.ndarray:
    value = int(key[-2:], 16)
    return np.full((4, 4, 3), value, np.uint8)


def _fill(root: str, keys: list[str], log: str, start) -> None:
    """A worker: fill the store, recording each key it made (one line per key, its own log)."""
    store = ImageStore(Path(root))

    def make(todo):
        n = 0
        for k in todo:
            if not store.has(k):
                time.sleep(0.02)  # long enough for the other workers to ask for the same keys
                store.put(k, _image(k))
                with open(log, "a") as fh:
                    fh.write(k + "\n")
                n += 1
        return n

    start.wait()
    store.fill(keys, make)


def test_concurrent_fill_makes_each_image_once(tmp_path):
    keys = [f"{i:020x}" for i in range(40)]
    root = tmp_path / "images"
    start = CTX.Barrier(4)
    procs = [CTX.Process(target=_fill, args=(str(root), keys, str(tmp_path / f"made{i}.log"), start))
             for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    made = [line for i in range(4) if (tmp_path / f"made{i}.log").exists()
            for line in (tmp_path / f"made{i}.log").read_text().split()]
    assert sorted(made) == keys  # every image made, none twice
    store = ImageStore(root)
    for k in keys:
        assert (store.get(k) == _image(k)).all()
    assert not list(root.glob(".*.tmp"))  # no temporary file left behind


def _hold(path: str, key: str, ready) -> None:
    KeyLocks.at(path).lock(key)
    ready.set()
    time.sleep(60)


def test_key_lock_excludes_other_processes_and_dies_with_its_holder(tmp_path):
    path = str(tmp_path / ".lock")
    ready = CTX.Event()
    holder = CTX.Process(target=_hold, args=(path, "k1", ready))
    holder.start()
    try:
        assert ready.wait(30)
        locks = KeyLocks.at(path)
        assert not locks.try_lock("k1")  # held by the other process
        assert locks.try_lock("k2")  # another key is free
        locks.unlock("k2")
        os.kill(holder.pid, signal.SIGKILL)  # the kernel drops a dead holder's locks
        holder.join(30)
        assert locks.try_lock("k1")
        locks.unlock("k1")
    finally:
        if holder.is_alive():
            holder.kill()


def _compute_entry(root: str, log: str, out: str, start) -> None:
    def compute():
        with open(log, "a") as fh:
            fh.write(f"{os.getpid()}\n")
        time.sleep(0.5)
        return {"value": 42, "list": list(range(100))}

    start.wait()
    value, hit = Cache(root).get_or_compute({"name": "entry", "x": 1}, compute)
    Path(out).write_text(json.dumps({"value": value, "hit": hit}))


def test_concurrent_cache_entry_is_computed_once(tmp_path):
    start = CTX.Barrier(3)
    outs = [tmp_path / f"out{i}.json" for i in range(3)]
    procs = [CTX.Process(target=_compute_entry, args=(str(tmp_path / "cache"), str(tmp_path / "computed.log"),
                                                      str(out), start)) for out in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    assert len((tmp_path / "computed.log").read_text().split()) == 1  # one process computed it
    got = [json.loads(o.read_text()) for o in outs]
    assert all(g["value"] == {"value": 42, "list": list(range(100))} for g in got)
    assert sorted(g["hit"] for g in got) == [False, True, True]  # the others loaded its entry
    entries = [p for p in (tmp_path / "cache").iterdir() if p.is_dir()]
    assert len(entries) == 1 and not entries[0].name.startswith(".")


# -- two runs sharing base-model requests, at the same time --------------------------------------


def _toy_config(out: Path, name: str, technique: dict) -> dict:
    return {"name": name, "model": "toy", "technique": technique,
            "concept": {"name": "cross", "retain": ["circle", "square"]},
            "metrics": [{"name": "ua", "params": {"max_prompts": 3}}, {"name": "ira", "params": {"max_prompts": 3}}],
            "sampler": {"steps": 2, "batch_size": 2}, "output_dir": str(out)}


def _run(cfg: dict, start=None) -> None:
    from evallearn.config import parse_config
    from evallearn.runner import run

    if start is not None:
        start.wait()
    run(parse_config(cfg))


def _in_process(cfg: dict) -> None:
    """One run in a fresh process (the same kind of process as the concurrent ones)."""
    p = CTX.Process(target=_run, args=(cfg,))
    p.start()
    p.join(300)
    assert p.exitcode == 0


def _base_written(run_dir: Path) -> int:
    return sum(e.get("written", 0) for line in (run_dir / "manifest.jsonl").read_text().splitlines()
               for e in [json.loads(line)] if e["event"] == "base_images")


def _metrics(run_dir: Path) -> dict:
    res = json.loads((run_dir / "results.json").read_text())
    return {k: (m["before"]["value"], m["after"]["value"], m["after"]["n"]) for k, m in res["metrics"].items()}


def test_two_runs_sharing_base_requests_at_once_equal_them_one_after_the_other(tmp_path):
    """Two cells (UCE at two settings, same concept and metrics) started together on one output
    folder: the shared base images are generated once between them, the base metric values are
    computed once, and every number equals the same two runs made one after the other."""
    techniques = [{"name": "uce", "params": {"guide": "shape"}},
                  {"name": "uce", "params": {"guide": "shape", "erase_scale": 0.5}}]
    shared, alone = tmp_path / "shared", tmp_path / "alone"
    start = CTX.Barrier(2)
    procs = [CTX.Process(target=_run, args=(_toy_config(shared, f"c{i}", t), start))
             for i, t in enumerate(techniques)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
        assert p.exitcode == 0
    for i, t in enumerate(techniques):
        _in_process(_toy_config(alone, f"c{i}", t))

    dirs = {out: sorted(p for p in out.iterdir() if p.name.startswith("c")) for out in (shared, alone)}
    base = {out: next((out / "_base").iterdir()) / "images" for out in (shared, alone)}
    n_base = len(list(base[alone].glob("*.png")))
    assert n_base > 0
    # every base image was made by exactly one of the two concurrent runs
    assert sum(_base_written(d) for d in dirs[shared]) == n_base
    assert sorted(p.name for p in base[shared].glob("*.png")) == sorted(p.name for p in base[alone].glob("*.png"))
    for png in base[alone].glob("*.png"):
        assert (base[shared] / png.name).read_bytes() == png.read_bytes()
    # one entry per base metric value, and the same numbers as the runs made one after the other
    assert len([p for p in (base[shared].parent / "metrics").iterdir() if p.is_dir()]) == 2
    for a, b in zip(dirs[shared], dirs[alone], strict=True):
        assert a.name == b.name
        assert _metrics(a) == _metrics(b)
    assert not list(shared.rglob(".*.tmp"))
