"""Generation speed of the engine options (``engine:``), all arms in one process.

Arms, each generating the same requests from the same pipeline:

* ``seed_loop``: one prompt per pipeline call, the pipeline in the precision the seed project
  (Eval-Learn's reference code) uses: fp16 throughout on CUDA (its ``use_fp16=True``), fp32 on CPU;
* ``engine_today``: our batched engine with the default engine settings (fp32 as loaded);
* one arm per option (``bf16``, ``fp16``, ``attention_math``, ``channels_last``, ``fuse_qkv``,
  ``compile``, ``batch_auto``) and ``all`` (bf16 + channels-last + fused QKV + compile + auto batch).

For each arm: images/s, the UNet model FLOPs utilisation (UNet FLOPs per image x images/s / the
device's peak dense bf16 FLOP/s), peak memory during the arm (CUDA: ``max_memory_allocated``;
CPU: peak resident memory sampled every 10 ms, minus the resident memory before the arm), the
compile time (``compile`` arms, measured once, before generating) and how far the arm's images
are from ``engine_today``'s (uint8 grey levels: mean and max |difference|, share of values that
differ). UNet FLOPs are counted with ``torch.utils.flop_counter`` on a meta-device copy of the
UNet (no arithmetic is done): SD-1.5 at 512 px is 0.80 TFLOP per UNet forward of one sample.

Models: ``sd15`` (the SD-1.5 architecture with random weights, as in bench_edits.py), ``toy``
(the trained toy model), ``tiny`` (the tiny random test pipeline). The issue's setting is

    python benchmarks/bench_engine.py --model sd15 --device cuda --size 512 --steps 50 --guidance 7.5 --n 64

and on a CPU, a reduced one that shows the script works (absolute numbers mean little there):

    python benchmarks/bench_engine.py --model sd15 --size 64 --steps 2 --n 4 --batch 2 --arms seed_loop,engine_today
    python benchmarks/bench_engine.py --model toy --steps 20 --n 32 --threads 1

``--peak-tflops`` sets the peak for the MFU column; on CUDA it is looked up from the device name
(table ``PEAK_BF16_TFLOPS``: dense bf16 tensor-core peaks from NVIDIA's datasheets).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import threading
import time
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent

#: dense (no sparsity) bf16 tensor-core peak, TFLOP/s, by a substring of the CUDA device name;
#: the first match wins, so more specific names come first
PEAK_BF16_TFLOPS = {
    "H100 PCIe": 756.0,
    "H100 NVL": 835.0,
    "H100": 989.4,  # SXM
    "H200": 989.4,
    "GH200": 989.4,
    "A100": 312.0,
    "L40S": 362.0,
    "L4": 121.0,
    "A10G": 70.0,
}

ARMS = {
    "seed_loop": None,
    "engine_today": {},
    "bf16": {"precision": "bf16"},
    "fp16": {"precision": "fp16"},
    "attention_math": {"attention": "math"},
    "channels_last": {"channels_last": True},
    "fuse_qkv": {"fuse_qkv": True},
    "compile": {"compile": True},
    "batch_auto": {"batch_size": "auto"},
    "all": {"precision": "bf16", "channels_last": True, "fuse_qkv": True, "compile": True, "batch_size": "auto"},
}


def build_sd15():
    spec = importlib.util.spec_from_file_location("bench_edits", HERE / "bench_edits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_sd15()


def load(model: str, device: str):
    """(pipeline, default image size, default guidance)."""
    if model == "sd15":
        return build_sd15().to(device), 512, 7.5
    if model == "tiny":
        from evallearn.models.tiny import build_tiny_pipeline

        return build_tiny_pipeline().to(device), 64, 6.0
    from evallearn.models.loading import load_pipeline, resolve_model

    info = resolve_model(model)
    return load_pipeline(info, device), info.default_size, info.default_guidance


def unet_flops(unet, height: int, width: int, factor: int, seq: int) -> float:
    """FLOPs of one UNet forward of one sample, counted on a meta-device copy."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.device("meta"):
        meta = type(unet).from_config(unet.config)
    h, w = height // factor, width // factor
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        meta(torch.randn(1, unet.config.in_channels, h, w, device="meta"), torch.tensor(999, device="meta"),
             encoder_hidden_states=torch.randn(1, seq, unet.config.cross_attention_dim, device="meta"))
    return float(counter.get_total_flops())


class PeakMemory:
    """Peak memory over a ``with`` block: CUDA allocations, or sampled resident memory on CPU."""

    def __init__(self, device: str) -> None:
        self.device = device
        self.peak_bytes = 0

    @staticmethod
    def _rss() -> int:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")

    def __enter__(self):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            self._base = self._rss()
            self._max = self._base
            self._stop = threading.Event()
            self._thread = threading.Thread(target=self._sample, daemon=True)
            self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.wait(0.01):
            self._max = max(self._max, self._rss())

    def __exit__(self, *exc):
        if self.device.startswith("cuda"):
            torch.cuda.synchronize()
            self.peak_bytes = torch.cuda.max_memory_allocated()
        else:
            self._stop.set()
            self._thread.join()
            self.peak_bytes = max(self._max, self._rss()) - self._base
        return False


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def run_arm(name, kw, pipe, reqs, args, device, first: bool):
    """One timed pass of one arm; ``first`` adds the warm-up batch (and, for compile arms, the
    compile, which later passes find in torch's cache)."""
    from evallearn.engine import EngineConfig, applied
    from evallearn.generation import Generator

    out: dict[str, np.ndarray] = {}
    gen = Generator(pipe, device)
    result: dict = {"arm": name}
    if kw is None:  # the seed project's loop: one prompt per call, its precision
        engine = EngineConfig(precision=args.seed_precision, vae_precision="same") \
            if args.seed_precision != "fp32" else EngineConfig()
        result["precision"] = args.seed_precision
    else:
        engine = EngineConfig(**kw)
    with applied(pipe, engine, device, reqs, args.batch) as state:
        size = 1 if kw is None else state.batch_size
        result["batch_size"] = size
        result["compile_s"] = round(state.timings.get("engine_compile", 0.0), 2) if engine.compile else None
        result["notes"] = state.notes
        if first:
            gen.run_batch(reqs[:size])  # warm-up: allocator, kernels, autotuning
        with PeakMemory(device) as mem:
            sync(device)
            t0 = time.perf_counter()
            if kw is None:
                for r in reqs:
                    out[r.key] = gen.run_batch([r])[0]
            else:
                gen.generate(reqs, have=lambda r: False, put=lambda r, im: out.__setitem__(r.key, im),
                             batch_size=size)
            sync(device)
            result["seconds"] = time.perf_counter() - t0
    result["peak_memory_gib"] = mem.peak_bytes / 2**30
    return result, np.stack([out[r.key] for r in reqs]).astype(np.int16)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="toy", help="sd15, toy, tiny, or a pipeline folder / hub id")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--guidance", type=float, default=None, help="CFG scale (default: the model's)")
    ap.add_argument("--n", type=int, default=32, help="images per arm")
    ap.add_argument("--batch", type=int, default=16, help="sampler.batch_size of the engine arms")
    ap.add_argument("--repeats", type=int, default=2, help="rounds over all arms; each arm keeps its best")
    ap.add_argument("--arms", default=",".join(ARMS), help="comma-separated subset of: " + ", ".join(ARMS))
    ap.add_argument("--seed-precision", default=None, choices=["fp32", "fp16", "bf16"],
                    help="precision of the seed_loop arm (default: fp16 on CUDA, fp32 on CPU)")
    ap.add_argument("--peak-tflops", type=float, default=None, help="peak dense bf16 TFLOP/s for the MFU")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="write the results as JSON here")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = args.device
    args.seed_precision = args.seed_precision or ("fp16" if device.startswith("cuda") else "fp32")
    arms = [a.strip() for a in args.arms.split(",") if a.strip()]
    unknown = [a for a in arms if a not in ARMS]
    if unknown:
        ap.error(f"unknown arms: {', '.join(unknown)}")

    from evallearn.generation import GenRequest
    from evallearn.models.loading import quiet_hf

    quiet_hf()
    t0 = time.perf_counter()
    pipe, default_size, default_guidance = load(args.model, device)
    size = args.size or default_size
    guidance = default_guidance if args.guidance is None else args.guidance
    build_s = time.perf_counter() - t0
    factor = getattr(pipe, "vae_scale_factor", 8)
    seq = getattr(pipe.tokenizer, "model_max_length", 77)
    per_forward = unet_flops(pipe.unet, size, size, factor, seq)
    cfg_rows = 2 if guidance > 1.0 else 1
    per_image = per_forward * cfg_rows * args.steps

    peak = args.peak_tflops
    gpu = torch.cuda.get_device_name(0) if device.startswith("cuda") else None
    if peak is None and gpu:
        peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in gpu), None)
    machine = {"device": device, "gpu": gpu, "cpu": _cpu_name(), "threads": torch.get_num_threads(),
               "torch": torch.__version__, "python": platform.python_version()}
    setting = {"model": args.model, "size": size, "steps": args.steps, "guidance": guidance, "scheduler": "ddim",
               "n": args.n, "batch": args.batch, "unet_tflop_per_forward": per_forward / 1e12,
               "unet_tflop_per_image": per_image / 1e12, "peak_bf16_tflops": peak, "build_s": round(build_s, 1)}
    print(json.dumps({"machine": machine, "setting": setting}), flush=True)

    reqs = [GenRequest(f"a photo of object {i % 8}", seed=i, steps=args.steps, guidance_scale=guidance,
                       height=size, width=size) for i in range(args.n)]
    if "engine_today" in arms:  # the reference images first
        arms = ["engine_today"] + [a for a in arms if a != "engine_today"]
    # Rounds interleave the arms, and each arm keeps its best round, so a load that comes and
    # goes on a shared machine does not favour the arms that happened to run while it was away.
    best: dict[str, dict] = {}
    ref = None
    for round_ in range(args.repeats):
        for name in arms:
            res, images = run_arm(name, ARMS[name], pipe, reqs, args, device, first=round_ == 0)
            if round_ == 0:
                if name == "engine_today":
                    ref = images
                if ref is not None:
                    d = np.abs(images - ref)
                    res.update(diff_mean=round(float(d.mean()), 4), diff_max=int(d.max()),
                               diff_share=round(float((d > 0).mean()), 4))
                best[name] = res
            else:
                best[name]["seconds"] = min(best[name]["seconds"], res["seconds"])
                best[name]["peak_memory_gib"] = max(best[name]["peak_memory_gib"], res["peak_memory_gib"])
            print(json.dumps({"round": round_, "arm": name, "seconds": round(res["seconds"], 3)}), flush=True)
    results = []
    for name in arms:
        res = best[name]
        res["seconds"] = round(res["seconds"], 3)
        res["peak_memory_gib"] = round(res["peak_memory_gib"], 4)
        res["images_per_s"] = len(reqs) / res["seconds"]
        res["mfu"] = round(per_image * res["images_per_s"] / (peak * 1e12), 4) if peak else None
        results.append(res)
        print(json.dumps(res), flush=True)

    by = {r["arm"]: r for r in results}
    print(f"\n{'arm':<15}{'img/s':>10}{'x seed':>8}{'x today':>8}{'MFU':>7}{'peak MiB':>10}{'compile s':>10}"
          f"{'d mean':>8}{'d max':>6}")
    for r in results:
        x_seed = r["images_per_s"] / by["seed_loop"]["images_per_s"] if "seed_loop" in by else float("nan")
        x_today = r["images_per_s"] / by["engine_today"]["images_per_s"] if "engine_today" in by else float("nan")
        mfu = f"{r['mfu']:.3f}" if r["mfu"] is not None else "-"
        comp = f"{r['compile_s']:.1f}" if r["compile_s"] is not None else "-"
        print(f"{r['arm']:<15}{r['images_per_s']:>10.3f}{x_seed:>8.2f}{x_today:>8.2f}{mfu:>7}"
              f"{r['peak_memory_gib'] * 1024:>10.1f}{comp:>10}{r.get('diff_mean', float('nan')):>8.3f}"
              f"{r.get('diff_max', -1):>6}")
    if args.out:
        Path(args.out).write_text(json.dumps({"machine": machine, "setting": setting, "arms": results}, indent=1))


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


if __name__ == "__main__":
    main()
