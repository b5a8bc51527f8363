"""Generation engine speed: batched + deduplicated vs the peer's prompt-by-prompt loop.

Both arms run in the same process on the same pipeline and requests, so the ratio is
meaningful on a noisy machine; absolute times are not. Usage:

    python benchmarks/bench_generation.py [--model toy|FOLDER] [--n 32] [--batch 16] [--steps 20]

Prints seconds per image for each arm and the speed-up ratio. With ``--metrics 3`` it also
counts what deduplication saves when three metrics ask for overlapping requests.
"""

from __future__ import annotations

import argparse
import time


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default=None, help="toy, a pipeline folder, or empty for a tiny random pipeline")
    ap.add_argument("--n", type=int, default=32)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    from evallearn.generation import Generator, GenRequest, dedupe
    from evallearn.models.loading import load_pipeline, resolve_model
    from evallearn.models.tiny import build_tiny_pipeline

    if args.model:
        info = resolve_model(args.model)
        pipe, size = load_pipeline(info), info.default_size
    else:
        pipe, size = build_tiny_pipeline(), 64
    engine = Generator(pipe)
    reqs = [GenRequest(f"a photo of object {i % 8}", seed=i, steps=args.steps, height=size, width=size)
            for i in range(args.n)]

    def batched() -> None:
        engine.generate(reqs, have=lambda r: False, put=lambda r, im: None, batch_size=args.batch)

    def one_by_one() -> None:
        for r in reqs:
            engine.run_batch([r])

    engine.run_batch(reqs[:2])  # warm-up
    times = {"batched": [], "one_by_one": []}
    for _ in range(args.repeats):
        for name, fn in (("batched", batched), ("one_by_one", one_by_one)):
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    best = {k: min(v) for k, v in times.items()}
    for k, v in best.items():
        print(f"{k:>11}: {v / args.n * 1000:8.1f} ms/image")
    print(f"speed-up of batching: x{best['one_by_one'] / best['batched']:.2f}")
    # dedupe: three metrics asking for overlapping prompt sets
    overlapping = reqs + reqs[: args.n // 2] + reqs[args.n // 4 :]
    print(f"dedupe: {len(overlapping)} requested -> {len(dedupe(overlapping))} generated "
          f"(x{len(overlapping) / len(dedupe(overlapping)):.2f} fewer images)")


if __name__ == "__main__":
    main()
