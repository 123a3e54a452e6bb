"""Scale-out on Ray: actors that load their models once and run units of work.

memscan never schedules work itself. Ray places the actors (one per GPU when the cluster has
GPUs, otherwise one per ``cpus_per_worker`` CPUs), restarts an actor whose process dies and
retries the unit it was running. Units return plain rows; the calling stage, on the driver,
is the only writer to DuckDB and ingests them under the same idempotent keys as a
single-process run, so a retried unit or a restarted driver never duplicates a row.

:class:`LocalPool` runs the same units in this process, so each stage has one code path
whether it runs on one machine or on a cluster.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Protocol

from scanner.config import RayConfig
from scanner.errors import MemscanError

Task = Callable[[Any, Any], Any]  # task(state, unit) -> result; state is what the worker loaded once


class Pool(Protocol):
    def imap_unordered(self, task: Task, units: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        """(position of the unit, its result), in the order units finish."""

    def close(self) -> None: ...


def map_in_order(pool: Pool, task: Task, units: list[Any]) -> list[Any]:
    """Every unit's result, in the order of ``units``, wherever and in whatever order they ran."""
    results = dict(pool.imap_unordered(task, units))
    return [results[position] for position in range(len(units))]


class LocalPool:
    """Runs units one after another on state already loaded in this process."""

    def __init__(self, state: Any):
        self.state = state

    def imap_unordered(self, task: Task, units: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        for position, unit in enumerate(units):
            yield position, task(self.state, unit)

    def close(self) -> None:
        pass


def require_ray():
    try:
        import ray
    except ImportError:
        raise MemscanError("--ray needs Ray: pip install 'memscan[ray]'") from None
    return ray


def connect(address: str, num_cpus: int | None = None) -> None:
    """Join a running cluster (``auto`` or an address) or start one in this process (``local``)."""
    ray = require_ray()
    if ray.is_initialized():
        return
    options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False, "logging_level": "ERROR"}
    try:
        if address == "local":
            ray.init(num_cpus=num_cpus or os.cpu_count(), **options)
        else:
            ray.init(address=address, **options)
    except (ConnectionError, RuntimeError, ValueError) as error:
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise MemscanError(f"cannot reach the Ray cluster at {address!r}: {first_line} "
                           "(start one with 'ray start --head', or use --ray local)") from None


class _Worker:
    """One Ray actor: builds its state (loads models) once, then runs tasks on it."""

    def __init__(self, setup: Callable[[], Any], threads: int):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.state = setup()

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: Task, unit: Any) -> Any:
        return task(self.state, unit)


class RayPool:
    """A fixed set of Ray actors, each with at most ``in_flight`` units queued on it."""

    def __init__(self, setup: Callable[[], Any], settings: RayConfig):
        ray = require_ray()
        connect(settings.address)
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        if gpus:
            per_worker = {"num_gpus": 1, "num_cpus": settings.cpus_per_worker}
            count = settings.workers or gpus
        else:
            per_worker = {"num_cpus": settings.cpus_per_worker}
            count = settings.workers or max(1, int(resources.get("CPU", 1)) // settings.cpus_per_worker)
        actor = ray.remote(max_restarts=-1, max_task_retries=settings.max_task_retries, **per_worker)(_Worker)
        threads = 0 if gpus else settings.cpus_per_worker
        self.actors = [actor.remote(setup, threads) for _ in range(count)]
        # An actor gets work only once it has started: one the cluster cannot place yet (more
        # workers than GPUs) would otherwise hold its queued units until an autoscaler adds a node.
        self.starting = {actor.pid.remote(): actor for actor in self.actors}
        self.started: list = []
        self.in_flight = settings.in_flight
        self.ray = ray

    def worker_pids(self) -> list[int]:
        return self.ray.get([actor.pid.remote() for actor in self.actors])

    def imap_unordered(self, task: Task, units: Iterable[Any]) -> Iterator[tuple[int, Any]]:
        task_ref = self.ray.put(task)
        queue = iter(enumerate(units))
        pending: dict[Any, tuple[int, Any]] = {}

        def submit(actor) -> None:
            position, unit = next(queue, (None, None))
            if position is not None:
                pending[actor.run.remote(task_ref, unit)] = (position, actor)

        def start(actor) -> None:
            for _ in range(self.in_flight):
                submit(actor)

        for actor in self.started:
            start(actor)
        while pending or (self.starting and not self.started):
            (ready,), _ = self.ray.wait([*pending, *self.starting], num_returns=1)
            if ready in self.starting:
                self.started.append(self.starting.pop(ready))
                start(self.started[-1])
                continue
            position, actor = pending.pop(ready)
            try:
                result = self.ray.get(ready)
            except self.ray.exceptions.RayActorError:
                raise MemscanError(f"Ray workers died on unit {position} more often than max_task_retries allows; "
                                   "see the worker logs under /tmp/ray/session_latest/logs") from None
            submit(actor)
            yield position, result

    def close(self) -> None:
        for actor in self.actors:
            self.ray.kill(actor)

