"""Shared by the technique benchmarks: the full-size SD-1.5 architecture with random weights
(built by ``bench_edits.build_sd15``), a mean-time helper, the peak RSS and the JSON report. Imported by scripts run as
``python benchmarks/bench_<name>.py`` (their folder is on ``sys.path``)."""

from __future__ import annotations

import importlib.util
import json
import resource
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def build_sd15():
    """(unet, text_encoder, tokenizer, ...) as ``bench_edits.build_sd15`` returns them."""
    spec = importlib.util.spec_from_file_location("bench_edits", HERE / "bench_edits.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.build_sd15()


def timed(fn, repeats: int) -> float:
    """Mean seconds of ``repeats`` calls after one warm-up call; ``repeats`` 0: one call, no warm-up."""
    if repeats:
        fn()  # warm-up
    t = time.perf_counter()
    for _ in range(max(repeats, 1)):
        fn()
    return (time.perf_counter() - t) / max(repeats, 1)


def peak_rss_gib() -> float:
    """This process's peak resident set size so far, in GiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def emit(report: dict, out: str | None) -> None:
    """Print the report as JSON and write it to ``out`` when given."""
    text = json.dumps(report, indent=1)
    if out:
        Path(out).write_text(text)
    print(text)
