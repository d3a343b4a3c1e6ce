"""Scale-out: the batch driver's batches run on Ray actors, one pipeline each, results streamed back.

Each actor is a ``workers.Worker`` (one per GPU with ``num_gpus=1``; CPU actors share the cores when
the cluster has no GPU). The driver keeps two batches in flight per actor and writes every result as it
arrives (it alone writes files and the manifest). When an actor is lost (its process died, or its whole node),
its batches go back in the queue for the others, the caller hears which jobs are retried, and a replacement is
asked for; it takes batches only once Ray has placed it (a lost node's resources may never come back, and a
batch queued on an actor that is never placed would wait forever). Paths in jobs must be readable on every node.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from ..errors import UserError
from ..loading.runtime import Runtime
from .workers import BatchResult, Job, Outcome, Scoring, Worker, pipeline_key

IN_FLIGHT = 2  # batches queued per actor: the next one is ready while the driver writes images
MAX_ATTEMPTS = 3  # a batch whose worker died this often fails instead of killing more workers
#: How long the driver waits for a replacement to be placed when no worker is left (seconds).
REPLACEMENT_WAIT_S = 120.0


def connect(address: str | None) -> bool:
    """Join ``address`` (or start a local Ray); True when this call started it (and must shut it down)."""
    import ray

    if ray.is_initialized():
        return False
    if address and address != "auto":
        _check_reachable(address)
    try:
        ray.init(address=address, include_dashboard=False, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as err:
        where = f"Ray cluster at {address}" if address else "a local Ray"
        raise UserError(f"cannot start or join {where}: {str(err).splitlines()[0]}") from None
    return True


def _check_reachable(address: str) -> None:
    """Fail fast on an address nothing listens at (Ray itself retries for minutes)."""
    import socket

    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit():
        raise UserError(f"Ray address {address!r} must look like HOST:PORT, ray://HOST:PORT or auto")
    try:
        socket.create_connection((host, int(port)), timeout=10).close()
    except OSError as err:
        raise UserError(f"cannot reach the Ray cluster at {address} ({err.strerror or err})") from None


def actor_options(workers: int | None, device_map: str | None = None) -> tuple[int, dict[str, Any], int]:
    """(actor count, Ray resource options, torch threads per actor) from the cluster's resources; with a
    device map, one actor per GPU machine holding all its GPUs."""
    import ray

    resources = ray.cluster_resources()
    gpus, cpus = int(resources.get("GPU", 0)), max(1, int(resources.get("CPU", 1)))
    if device_map is not None:
        per_node = [int(n["Resources"].get("GPU", 0)) for n in ray.nodes() if n.get("Alive")]
        per_node = [g for g in per_node if g]
        if not per_node:
            raise UserError("--device-map needs GPUs, and the Ray cluster has none")
        count = workers or len(per_node)
        if count > len(per_node):
            raise UserError(f"{count} workers asked for, but the Ray cluster has {len(per_node)} GPU machine(s)")
        return count, {"num_gpus": min(per_node), "num_cpus": 1}, max(1, cpus // count)
    if gpus:
        count = workers or gpus
        if count > gpus:
            raise UserError(f"{count} workers asked for, but the Ray cluster has {gpus} GPU(s)")
        return count, {"num_gpus": 1, "num_cpus": 1}, max(1, cpus // count)
    count = workers or 1
    share = cpus / count if count > cpus else cpus // count
    return count, {"num_cpus": share}, max(1, int(share))


class BatchQueue:
    """Batches waiting for a worker, by model: a worker gets more of the model it holds while any remain."""

    def __init__(self, batches: Sequence[list[Job]]) -> None:
        self.queues: dict[Any, deque[tuple[list[Job], int]]] = {}
        for batch in batches:
            self.queues.setdefault(pipeline_key(batch[0].request), deque()).append((list(batch), 0))

    def __len__(self) -> int:
        return sum(len(q) for q in self.queues.values())

    def put_back(self, batch: list[Job], attempts: int) -> None:
        self.queues.setdefault(pipeline_key(batch[0].request), deque()).appendleft((batch, attempts))

    def take(self, holding: Any) -> tuple[list[Job], int]:
        """The next batch for a worker holding model ``holding`` (else from the model with most work left)."""
        if not self.queues.get(holding):
            holding = max(self.queues, key=lambda k: len(self.queues[k]))
        return self.queues[holding].popleft()


def run_on_ray(
    batches: Sequence[list[Job]],
    runtime: Runtime,
    address: str | None,
    workers: int | None,
    record: Callable[[BatchResult], None],
    scoring: Scoring | None = None,
    on_retry: Callable[[list[Job], str], None] | None = None,
) -> None:
    """Run batches on Ray actors (scoring their images with ``scoring``), calling ``record`` (on the driver) with
    each result as it arrives, and ``on_retry`` with the jobs of a batch put back because its worker was lost."""
    import ray
    from ray.exceptions import RayActorError, RayTaskError, WorkerCrashedError

    started = connect(address)
    actors: list[Any] = []  # placed and taking batches
    starting: dict[Any, Any] = {}  # a replacement's readiness -> the replacement, until Ray places it
    try:
        count, options, threads = actor_options(workers, runtime.device_map)
        remote_worker = ray.remote(Worker).options(**options)  # type: ignore[arg-type]
        actors = [remote_worker.remote(runtime, None, threads, scoring) for _ in range(count)]
        replacements = 2 * count
        queue = BatchQueue(batches)
        in_flight: dict[Any, tuple[Any, list[Job], int]] = {}
        holding: dict[Any, Any] = {}  # actor -> the model key of its last batch

        def top_up() -> None:
            for actor in actors:
                while queue and sum(a is actor for a, _, _ in in_flight.values()) < IN_FLIGHT:
                    batch, attempts = queue.take(holding.get(actor))
                    holding[actor] = pipeline_key(batch[0].request)
                    in_flight[actor.run.remote(batch)] = (actor, batch, attempts)

        def lose(actor: Any) -> None:
            """Stop giving ``actor`` batches (killed, in case it is only unreachable) and ask for a replacement."""
            nonlocal replacements
            if actor not in actors:
                return  # its other batches came back already
            actors.remove(actor)
            _kill(actor)
            if replacements:
                replacements -= 1
                replacement: Any = remote_worker.remote(runtime, None, threads, scoring)
                starting[replacement.__ray_ready__.remote()] = replacement  # Ray's own method of every actor

        top_up()
        while in_flight or (queue and starting):
            done, _ = ray.wait([*in_flight, *starting], num_returns=1,
                               timeout=None if in_flight else REPLACEMENT_WAIT_S)
            if not done:
                break  # no worker left, and no replacement could be placed
            ref = done[0]
            if ref in starting:
                replacement = starting.pop(ref)
                try:
                    ray.get(ref)
                    actors.append(replacement)
                except (RayActorError, WorkerCrashedError):
                    pass
                top_up()
                continue
            actor, batch, attempts = in_flight.pop(ref)
            try:
                record(ray.get(ref))
            except (RayActorError, WorkerCrashedError) as err:
                if attempts + 1 >= MAX_ATTEMPTS:
                    record(_failed(batch, f"its Ray worker was lost {MAX_ATTEMPTS} times"))
                else:
                    queue.put_back(batch, attempts + 1)
                    if on_retry is not None:
                        on_retry(batch, type(err).__name__)
                lose(actor)
            except RayTaskError as err:
                record(_failed(batch, f"Ray task failed: {str(err).splitlines()[0]}"))
            top_up()
        if queue:
            raise UserError(f"every Ray worker was lost; {len(queue)} batch(es) not run (rerun to resume)")
    finally:
        for actor in [*actors, *starting.values()]:
            _kill(actor)
        if started:
            ray.shutdown()


def _kill(actor: Any) -> None:
    import ray

    try:
        ray.kill(actor)
    except Exception:  # already gone with its node
        pass


def _failed(batch: list[Job], message: str) -> BatchResult:
    return BatchResult([Outcome(job, [], None, message, 0.0, 0) for job in batch], "", 0)
