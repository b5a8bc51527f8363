"""Sharding one large run across workers: ``eval-learn run CONFIG --shard I/N``.

A shard makes only its part of the run's images, into the run's own directory (images are
stored by request key, so shards write disjoint files), and scores nothing. Once every shard is
in, ``eval-learn run CONFIG`` (no ``--shard``) finds every image stored, generates none, and
computes the metrics: its ``results.json`` equals the unsharded run's, image for image.

Which images a shard makes: the run's requests are cut into the generator's fixed batches
(:func:`evallearn.generation.plan_batches`, the batch size the run generates with), and batch
``j`` belongs to shard ``j mod N + 1``. Whole batches, not single requests, so each image is
computed in the very batch an unsharded run computes it in (batched kernels may round the last
bit differently with other neighbours). Base-model images (padded batches: they depend on their
request and the batch size alone) are split the same way over their key-sorted list, into the
shared ``_base/`` folder. Each shard applies the technique, or loads its edit from the cache
(computed once among the shards: :meth:`evallearn.cache.Cache.get_or_compute`).

Shards hold the run directory's lock shared, so several run at once while a plain run of the
same config (which holds it alone) waits for them to finish; each shard records what it made in
``<run dir>/shards/<I>-of-<N>.json``. Probes are not sharded: the final run does them.
``batch_size: auto`` cannot be sharded (the batches must be the same on every worker).
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..config import RunConfig
from ..errors import UserError
from ..generation import GenRequest, plan_batches
from ..store import ImageStore, RunStore, atomic_write_json

_SHARD = re.compile(r"\s*(\d+)\s*/\s*(\d+)\s*")


@dataclass(frozen=True)
class Shard:
    """Shard ``index`` (1-based) of ``count``."""

    index: int
    count: int

    def __str__(self) -> str:
        return f"{self.index}/{self.count}"

    def keys(self, requests: list[GenRequest], batch_size: int) -> set[str]:
        """The keys of this shard's batches of ``requests`` (cut as the generator cuts them)."""
        return {r.key for j, batch in enumerate(plan_batches(requests, batch_size))
                if j % self.count == self.index - 1 for r in batch}


def parse_shard(text: str) -> Shard:
    """``"I/N"`` -> :class:`Shard`; a one-line :class:`UserError` unless 1 <= I <= N."""
    m = _SHARD.fullmatch(text or "")
    if not m or not 1 <= int(m.group(1)) <= int(m.group(2)):
        raise UserError(f"--shard '{text}': expected I/N with 1 <= I <= N, e.g. --shard 1/4")
    return Shard(int(m.group(1)), int(m.group(2)))


class ShardImages(ImageStore):
    """``store`` as a shard sees it: images outside ``keys`` count as present (another shard
    makes them), so the generator skips their batches."""

    def __init__(self, store: ImageStore, keys: set[str]) -> None:
        super().__init__(store.root)
        self.keys = keys

    def has(self, key: str) -> bool:
        return key not in self.keys or super().has(key)


def generation_batch_size(config: RunConfig) -> int:
    """The batch size the run generates with (``engine.batch_size``, else the sampler's)."""
    size = config.engine.batch_size
    if size == "auto":
        raise UserError("engine.batch_size: 'auto' cannot be sharded (every shard must cut the same batches); "
                        "set a number")
    return size if isinstance(size, int) else config.sampler.batch_size


def _missing(images: ImageStore, requests: list[GenRequest]) -> int:
    return sum(1 for r in requests if not images.has(r.key))


def run_shard(config: RunConfig, shard: Shard, console=None) -> dict[str, Any]:
    """Make shard ``shard`` of ``config``'s images (see the module docstring). Returns what it
    did: images written (``after``, ``base``) and how many of the run's images are still
    missing (``missing``: 0 when every shard is in)."""
    from rich.console import Console

    from ..models.loading import load_pipeline, resolve_model
    from ..progress import new_progress, quiet_library_bars
    from ..runner import base_dir, base_images, bind_pipeline, generate, prepare

    quiet_library_bars()
    console = console or Console(stderr=True)
    t0 = time.perf_counter()
    plan = prepare(config)
    cfg = plan.config
    size = generation_batch_size(cfg)
    store = RunStore(plan.run_dir)
    store.acquire(shared=True)
    try:
        with new_progress(f"{cfg.name} shard {shard}") as progress:
            store.write_config(_config_text(plan.config))
            base_ref = cfg.base_model or cfg.model
            base_info = plan.model if base_ref == cfg.model else resolve_model(base_ref)
            pipe = load_pipeline(base_info, cfg.device, cfg.dtype)
            same_model = base_ref == cfg.model and not plan.technique.changes_model
            base_written, base_store = 0, None
            if cfg.base_metrics and plan.metrics and not same_model:
                bind_pipeline(plan, pipe, "before")
                base_store = ImageStore(base_dir(plan) / "images")
                mine = shard.keys(sorted(plan.requests, key=lambda r: r.key), size)
                base_written = base_images(plan, pipe, ShardImages(base_store, mine), progress)
            if base_ref != cfg.model:
                pipe = load_pipeline(plan.model, cfg.device, cfg.dtype)
            pipe, cached = plan.technique.load_or_apply(pipe, plan.ctx)
            bind_pipeline(plan, pipe, "after")
            written = generate(plan, pipe, ShardImages(store.images, shard.keys(plan.requests, size)), "after",
                               progress)
        missing = _missing(store.images, plan.requests)
        if base_store is not None:
            missing += _missing(base_store, plan.requests)
        out = {"shard": str(shard), "after": written, "base": base_written, "technique_cached": cached,
               "missing": missing, "run_dir": str(plan.run_dir), "seconds": round(time.perf_counter() - t0, 3)}
        atomic_write_json(plan.run_dir / "shards" / f"{shard.index}-of-{shard.count}.json", out)
        return out
    finally:
        store.release()


def _config_text(config: RunConfig) -> str:
    import yaml

    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)


def shard_records(run_dir: Path) -> list[dict[str, Any]]:
    """What each finished shard of the run in ``run_dir`` recorded."""
    import json

    return [json.loads(p.read_text()) for p in sorted((run_dir / "shards").glob("*-of-*.json"))]
