"""Running a suite's cells as Ray tasks (``eval-learn bench SUITE --executor ray``).

Ray (Moritz et al., "Ray: A Distributed Framework for Emerging AI Applications", OSDI 2018) is
the distributed engine; this module only submits work to it. Each cell is one task that calls
:func:`evallearn.suite.executor.run_cell` on a worker, with the cell's resource needs: one GPU
(``num_gpus``) when its config's device is ``cuda``, ``num_cpus`` CPUs otherwise (its torch
thread count). Every worker writes into the suite's output folder, which must be one shared
filesystem for all nodes: the run lock, the atomic writes and the shared caches keep it correct
with many writers (:mod:`evallearn.store`, :mod:`evallearn.cache`), and base-model images and
cached edits are made once among them.

The cluster: ``address`` (``--address``), else ``$RAY_ADDRESS``, else a local Ray started for
the call and stopped after it. An address that does not answer is a one-line error before any
cell runs (a TCP check with a timeout first: Ray itself waits minutes for a dead address).
Workers run in the driver's working directory (relative paths in configs mean the same) and
need eval-learn installed, the same version of it and of ray as the driver.
"""

from __future__ import annotations

import os
import socket
import sys
from collections.abc import Sequence
from typing import Any

import ray

from ..config import RunConfig
from ..errors import UserError
from .cells import CACHED, FAILED, Cell, CellOutcome
from .executor import SuiteProgress, run_cell

#: seconds to wait for a cluster address to answer
CONNECT_TIMEOUT_S = 5.0


def _host_port(address: str) -> tuple[str, int] | None:
    """``(host, port)`` of ``host:port`` or ``ray://host:port``; None for ``auto``/``local``."""
    if address in ("auto", "local"):
        return None
    bare = address.split("://", 1)[1] if "://" in address else address
    host, sep, port = bare.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise UserError(f"--address '{address}': expected HOST:PORT, ray://HOST:PORT, auto or local")
    return host.strip("[]"), int(port)


def check_address(address: str, timeout: float = CONNECT_TIMEOUT_S) -> None:
    """A one-line :class:`UserError` unless ``address`` accepts a connection within ``timeout``."""
    hp = _host_port(address)
    if hp is None:
        return
    try:
        with socket.create_connection(hp, timeout=timeout):
            pass
    except OSError as exc:
        why = "no answer" if isinstance(exc, TimeoutError) else (exc.strerror or type(exc).__name__)
        raise UserError(f"--address '{address}': the Ray cluster does not answer ({why} within "
                        f"{timeout:g} s); start it (ray start --head) or fix the address") from None


def resources(config: RunConfig, label: str, num_cpus: float, num_gpus: float) -> dict[str, float]:
    """What a task of ``config`` asks Ray for: ``num_gpus`` for a ``cuda`` device, ``num_cpus``
    otherwise."""
    device = config.device
    if device.startswith("cuda"):
        if device != "cuda":
            raise UserError(f"{label}: device '{device}': on Ray each task is given its own GPU; use device: cuda")
        return {"num_gpus": num_gpus, "num_cpus": 1}
    if device != "cpu":
        raise UserError(f"{label}: device '{device}' cannot be scheduled on Ray (cpu or cuda)")
    return {"num_cpus": num_cpus}


def cell_resources(cell: Cell, num_cpus: float, num_gpus: float) -> dict[str, float]:
    """What a cell's task asks Ray for (:func:`resources`)."""
    return resources(cell.config, f"cell '{cell.id}'", num_cpus, num_gpus)


def check_feasible(need: dict[str, float], label: str) -> None:
    """A one-line :class:`UserError` when the cluster has fewer GPUs or CPUs in all than one task
    of ``label`` asks for (Ray would keep such a task pending for ever)."""
    have = ray.cluster_resources()
    for kind, key in (("num_gpus", "GPU"), ("num_cpus", "CPU")):
        if need.get(kind, 0) > have.get(key, 0):
            raise UserError(f"{label} asks Ray for {need[kind]:g} {key}s; the cluster has {have.get(key, 0):g}")


def _threads(need: dict[str, float]) -> int:
    """Torch threads of a task: its CPUs for a CPU task (0: leave torch's default)."""
    return 0 if "num_gpus" in need else max(1, int(need["num_cpus"]))


def _on_worker(cwd: str, threads: int) -> None:
    if os.path.isdir(cwd):
        os.chdir(cwd)
    if threads:
        import torch

        torch.set_num_threads(threads)


def _cell_task(config_json: dict[str, Any], cwd: str, threads: int) -> CellOutcome:
    """On a worker: the driver's working directory, ``threads`` torch threads for a CPU cell,
    then :func:`run_cell`."""
    _on_worker(cwd, threads)
    return run_cell(config_json)


def _shard_task(config_json: dict[str, Any], index: int, count: int, cwd: str, threads: int) -> dict[str, Any]:
    """On a worker: shard ``index`` of ``count`` of a run (:func:`evallearn.suite.shard.run_shard`)."""
    from ..config import parse_config
    from .shard import Shard, run_shard

    _on_worker(cwd, threads)
    return run_shard(parse_config(config_json), Shard(index, count))


def _first_line(exc: BaseException) -> str:
    return " ".join(str(exc).split("\n")[:1]).strip()


class RayExecutor:
    """Cells as Ray tasks on the cluster at ``address`` (see the module docstring).
    ``num_cpus``: CPUs (= torch threads) per CPU cell; ``num_gpus``: GPUs per CUDA cell."""

    def __init__(self, address: str | None = None, num_cpus: float = 1, num_gpus: float = 1,
                 local_cpus: int | None = None) -> None:
        self.address = address or os.environ.get("RAY_ADDRESS") or None
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self._owns = False
        if self.address is not None:
            check_address(self.address)
        if ray.is_initialized():  # a driver already connected (a notebook, the tests): use it
            return
        if self.address is None or self.address == "local":
            ray.init(num_cpus=local_cpus, include_dashboard=False, configure_logging=False)
            self._owns = True
            return
        try:
            ray.init(address=self.address, configure_logging=False)
        except Exception as exc:  # refused, another version, authentication: Ray's own message, one line
            raise UserError(f"--address '{self.address}': cannot join the Ray cluster: "
                            f"{type(exc).__name__}: {_first_line(exc)}") from None

    def shutdown(self) -> None:
        if ray.is_initialized() and self._owns:
            ray.shutdown()
        self._owns = False

    def run(self, cells: Sequence[Cell], progress: SuiteProgress | None = None) -> list[CellOutcome]:
        """Submit every cell, report each as it finishes; outcomes in the order of ``cells``."""
        task = ray.remote(_cell_task)
        cwd = os.getcwd()
        refs = {}
        try:
            needs = [cell_resources(c, self.num_cpus, self.num_gpus) for c in cells]  # refused before any runs
            for cell, need in zip(cells, needs, strict=True):
                check_feasible(need, f"cell '{cell.id}'")
            for cell, need in zip(cells, needs, strict=True):
                ref = task.options(**need, max_retries=1, name=f"cell {cell.id}").remote(
                    cell.config_json(), cwd, _threads(need))
                refs[ref] = cell
            print(f"ray: {len(cells)} cells submitted ({ray.cluster_resources().get('CPU', 0):g} CPUs, "
                  f"{ray.cluster_resources().get('GPU', 0):g} GPUs in the cluster)", file=sys.stderr)
            outcomes: dict[str, CellOutcome] = {}
            pending = list(refs)
            while pending:
                ready, pending = ray.wait(pending, num_returns=1)
                cell = refs[ready[0]]
                try:
                    outcome = ray.get(ready[0])
                except Exception as exc:  # the worker died (killed, out of memory): not the cell's code
                    outcome = CellOutcome(cell.id, FAILED, None, f"ray: {type(exc).__name__}: {_first_line(exc)}")
                outcome.cell_id = cell.id
                outcomes[cell.id] = outcome
                if progress is not None:
                    progress.finish(outcome)
        except BaseException:
            for ref in refs:  # Ctrl-C: stop the workers; what they wrote is kept, a rerun resumes
                ray.cancel(ref, force=True)
            raise
        finally:
            self.shutdown()
        return [outcomes[c.id] for c in cells]

    def run_sharded(self, config: RunConfig, count: int) -> tuple[list[dict[str, Any]], CellOutcome]:
        """One run as ``count`` shard tasks (:mod:`evallearn.suite.shard`) side by side, then
        one task that scores them (:func:`run_cell`: generates nothing, writes results.json).
        Returns each shard's record and the final outcome."""
        from ..runner import prepare
        from .shard import generation_batch_size

        if count < 1:
            raise UserError(f"--shards {count}: give at least 1")
        generation_batch_size(config)  # refused here, before any task: batch_size auto
        run_dir = prepare(config).run_dir  # a bad config is one line now, not on every worker
        if (run_dir / "results.json").is_file():
            self.shutdown()
            return [], CellOutcome(config.name, CACHED, str(run_dir), None)
        need = resources(config, f"run '{config.name}'", self.num_cpus, self.num_gpus)
        check_feasible(need, f"run '{config.name}'")
        cwd, data = os.getcwd(), config.model_dump(mode="json")
        shard = ray.remote(_shard_task)
        refs = [shard.options(**need, max_retries=1, name=f"{config.name} shard {i}/{count}").remote(
            data, i, count, cwd, _threads(need)) for i in range(1, count + 1)]
        try:
            records = []
            for i, ref in enumerate(refs, 1):
                try:
                    records.append(ray.get(ref))
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None) or exc
                    if isinstance(cause, UserError):
                        raise UserError(_first_line(cause)) from None
                    raise RuntimeError(f"shard {i}/{count}: {type(cause).__name__}: {_first_line(cause)}") from None
            final = ray.remote(_cell_task).options(**need, max_retries=1, name=f"{config.name} score")
            outcome = ray.get(final.remote(data, cwd, _threads(need)))
        except BaseException:
            for ref in refs:
                ray.cancel(ref, force=True)
            raise
        finally:
            self.shutdown()
        return records, outcome
