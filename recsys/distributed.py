"""The small layer over Ray: start or join a Ray runtime, and map a function over shards.

Everything that distributes work (the offline evaluator, later training sweeps and experiments) goes through
:func:`map_shards`, which runs ``fn(item, *shared)`` for every item either in this process (``local``) or as
Ray tasks (``ray``), and returns the results **in input order** either way. Large arguments that every shard
needs (a fitted model, item masks) are passed in ``shared``: under Ray they are put in the object store once
(``ray.put``) instead of being pickled into every task.

Ray is imported lazily, so the local backend never pays for it.

API (Ray 2.x): ``ray.init(num_cpus=..., include_dashboard=False, ignore_reinit_error=True,
log_to_driver=False)`` starts a local runtime; ``ray.init(address=...)`` joins a cluster
(``"auto"`` or ``"ray://host:10001"``); ``ray.remote(num_cpus=1)(fn)`` makes a task; ``ray.wait`` /
``ray.get`` gather results.
"""

from __future__ import annotations

import logging
import os
from typing import Any, Callable, Sequence, TypeVar

from recsys.configlib import Backend, RayConfig
from recsys.progress import progress

logger = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")


def _ray():
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is a declared dependency
        raise ValueError("the ray backend needs the 'ray' package (pip install 'ray[default]')") from exc
    return ray


def is_initialized() -> bool:
    """True when this process is connected to a Ray runtime (without importing Ray if it is not loaded)."""
    import sys

    ray = sys.modules.get("ray")
    return bool(ray is not None and ray.is_initialized())


def init_ray(ray_cfg: RayConfig | None = None) -> bool:
    """Start a local Ray runtime (``ray_cfg.address`` None) or connect to a cluster at ``ray_cfg.address``.

    Returns True when this call started or joined Ray (so the caller owns it and should :func:`shutdown`),
    False when the process was already connected (the existing session is reused as it is).
    """
    ray_cfg = ray_cfg or RayConfig()
    ray = _ray()
    if ray.is_initialized():
        return False
    if ray_cfg.address:
        logger.info("connecting to Ray at %s", ray_cfg.address)
        ray.init(address=ray_cfg.address, ignore_reinit_error=True, log_to_driver=False)
    else:
        if ray_cfg.num_cpus < 1:
            raise ValueError(f"ray.num_cpus: must be >= 1, got {ray_cfg.num_cpus}")
        logger.info("starting a local Ray runtime with %d CPUs", ray_cfg.num_cpus)
        # Serve's proxy must answer its readiness check within 5 s by default; on a busy 2-core machine it took
        # longer and Serve killed it (the local runtime's processes inherit this environment; the user's wins)
        os.environ.setdefault("RAY_SERVE_PROXY_READY_CHECK_TIMEOUT_S", "60")
        ray.init(
            num_cpus=ray_cfg.num_cpus,
            include_dashboard=False,
            ignore_reinit_error=True,
            log_to_driver=False,
        )
    return True


def shutdown() -> None:
    """Disconnect from (and, if local, stop) the Ray runtime of this process; a no-op when none is running."""
    if is_initialized():
        _ray().shutdown()


def map_shards(
    fn: Callable[..., R],
    items: Sequence[T],
    backend: Backend | str = Backend.LOCAL,
    ray_cfg: RayConfig | None = None,
    shared: Sequence[Any] = (),
    desc: str = "",
    num_cpus: float = 1,
) -> list[R]:
    """``[fn(item, *shared) for item in items]``, in this process or as Ray tasks; results in input order.

    Args:
        fn: a module-level (importable) function; under Ray it runs in worker processes, so it and its
            arguments must be picklable (cloudpickle).
        items: the shards, one task each.
        backend: ``local`` (a loop with a progress bar) or ``ray``.
        ray_cfg: where Ray runs; Ray is started (or joined) on first use when it is not running yet and left
            running for later calls (call :func:`shutdown` when done).
        shared: arguments every call receives after the item; under Ray each is ``ray.put`` once.
        desc: progress bar label.
        num_cpus: CPUs reserved per Ray task.
    """
    backend = Backend(backend)
    items = list(items)
    if backend is Backend.LOCAL:
        return [fn(item, *shared) for item in progress(items, desc=desc, total=len(items), unit="shard")]
    ray = _ray()
    if not ray.is_initialized():
        init_ray(ray_cfg)
    remote = ray.remote(num_cpus=num_cpus)(fn)
    shared_refs = [ray.put(s) for s in shared]
    refs = [remote.remote(item, *shared_refs) for item in items]
    ticks = iter(progress(range(len(refs)), desc=desc, total=len(refs), unit="shard"))
    pending = list(refs)
    while pending:  # advance the bar as tasks finish (in any order)
        _, pending = ray.wait(pending, num_returns=1)
        next(ticks, None)
    next(ticks, None)  # exhausts the iterator, which closes the bar
    return ray.get(refs)  # in input order


__all__ = ["init_ray", "shutdown", "map_shards", "is_initialized"]
