"""A 4-cell toy suite (UCE at two settings x two shapes) run by the local executor and by the Ray
executor with 2 one-CPU workers, timed in the same run on this machine; the ratio is the number
to read (seconds depend on the machine and its load).

* **local**: the cells one after the other in this process, with ``--local-threads`` torch
  threads (default 1, what each Ray cell gets, so the ratio isolates running two cells at once;
  ``0`` = torch's default);
* **ray**: the cells as Ray tasks on a local cluster of ``--workers`` CPUs (one CPU, one torch
  thread per cell), timed from submission to the last result; starting the cluster is timed
  apart (``ray_start``).

Each executor writes a fresh output folder, so nothing is cached between them (the toy model's
weights are shipped). It reports whether both gave the same metric values (CPU images depend on
torch's thread count, so they need not when the thread counts differ).

Run:  .venv/bin/python benchmarks/bench_ray.py [--workers 2] [--steps 10] [--prompts 8] [--local-threads 1]
      [--out bench_ray.json]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path


def suite(out: Path, steps: int, prompts: int):
    from evallearn.suite.spec import expand, parse_suite

    return expand(parse_suite({
        "name": "bench-ray", "model": "toy",
        "techniques": [{"name": "uce", "params": {"guide": "shape"}, "grid": {"lamb": [0.5, 1.0]}}],
        "concepts": ["circle", "cross"],
        "metrics": [{"name": "ua", "params": {"max_prompts": prompts}},
                    {"name": "ira", "params": {"max_prompts": prompts}}],
        "sampler": {"steps": steps, "batch_size": 8},
        "output_dir": str(out),
    }))


def values(outcomes) -> dict:
    out = {}
    for o in outcomes:
        assert o.status == "done", (o.cell_id, o.error)
        res = json.loads((Path(o.run_dir) / "results.json").read_text())
        out[o.cell_id] = {k: m["after"]["value"] for k, m in res["metrics"].items()}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--local-threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import ray
    import torch

    from evallearn.suite.executor import LocalExecutor
    from evallearn.suite.ray_executor import RayExecutor

    with tempfile.TemporaryDirectory(prefix="bench-ray-") as tmp:
        tmp = Path(tmp)
        cells = suite(tmp / "local", args.steps, args.prompts)
        if args.local_threads:
            torch.set_num_threads(args.local_threads)
        local_threads = torch.get_num_threads()
        t = time.perf_counter()
        local = LocalExecutor().run(cells)
        local_s = time.perf_counter() - t

        t = time.perf_counter()
        ray.init(num_cpus=args.workers, include_dashboard=False, configure_logging=False, log_to_driver=False)
        start_s = time.perf_counter() - t
        cells = suite(tmp / "ray", args.steps, args.prompts)
        t = time.perf_counter()
        remote = RayExecutor(None, num_cpus=1).run(cells)
        ray_s = time.perf_counter() - t
        ray.shutdown()
        same = values(local) == values(remote)

    record = {
        "cells": len(cells), "steps": args.steps, "prompts_per_metric": args.prompts, "workers": args.workers,
        "local_s": round(local_s, 2), "ray_s": round(ray_s, 2), "ray_start_s": round(start_s, 2),
        "ray_over_local": round(ray_s / local_s, 3), "ray_incl_start_over_local": round((ray_s + start_s) / local_s, 3),
        "same_values": same, "local_torch_threads": local_threads, "ray_torch_threads_per_cell": 1,
        "cpus": os.cpu_count(), "load_avg_1m": round(os.getloadavg()[0], 2), "platform": platform.platform(),
        "ray": ray.__version__, "torch": torch.__version__,
    }
    print(json.dumps(record, indent=2))
    if args.out:
        args.out.write_text(json.dumps(record, indent=2) + "\n")


if __name__ == "__main__":
    main()
