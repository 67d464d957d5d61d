"""The engine being served, and its hot reload.

:class:`ServiceState` holds one :class:`~recsys.engine.Engine`. A reload loads and verifies the new bundle
beside the old one (:func:`recsys.training.load_engine` checks every checksum before parsing), checks that
it is compatible (same id types), warms it up with a few requests, and only then swaps it in with a single
reference assignment under a lock. A request reads the reference once when it starts and finishes on that
engine, so a swap never fails or mixes a request; a bundle that fails any step is refused, the reason is
returned and counted, and the old engine keeps serving.

Optionally a watcher thread polls the bundle folder's ``latest`` pointer every ``watch_interval_s`` and
reloads when it moves (a version that failed is not retried until ``latest`` moves again).
"""

from __future__ import annotations

import dataclasses
import logging
import math
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Callable

import numpy as np

from recsys.bundle import BundleError, resolve_version
from recsys.engine import Engine
from serving.config import ServingConfig
from serving.encode import build_requests
from serving.metrics import ServiceMetrics

logger = logging.getLogger(__name__)

FLOOR_MARGIN = 2.0  # the timeout floor: this many times the retrieval cost over its share (ServingConfig)


def set_threads(n: int) -> None:
    """torch / FAISS intra-op threads of this process (concurrent requests already use the cores)."""
    import torch

    torch.set_num_threads(n)
    try:
        import faiss

        faiss.omp_set_num_threads(n)
    except ImportError:  # pragma: no cover - faiss is a dependency
        pass


class ReloadRefused(ValueError):
    """The new bundle was not installed (the message says why); the old engine keeps serving."""


class ReloadBusy(RuntimeError):
    """Another reload is in progress."""


@dataclasses.dataclass(frozen=True)
class Loaded:
    """An installed engine and where it came from (``source``: the version folder, or a label)."""

    engine: Engine
    source: str
    loaded_at: float
    min_timeout_ms: float = 0.0  # the smallest timeout_ms this engine accepts (ServingConfig: measured floor)


def _id_kind(ids: np.ndarray) -> str:
    if len(ids) == 0:
        return "empty"
    return "int" if np.asarray(ids).dtype.kind in "iu" else "str"


def warm_up(engine: Engine, n: int) -> float | None:
    """Rank ``n`` requests (known users, an unknown user, with and without history) twice through the same
    encoding path as real requests, so lazily built state (thread pools, torch kernels, FAISS) is ready before
    the engine serves; checks the results' shapes. Raises on any failure.

    Returns the retrieval cost of one request in milliseconds: the fastest of 3 single-request calls (the
    first warm-up request alone), the time a request's retrieval needs at the least; None when ``n`` is 0."""
    if n <= 0:
        return None
    cat = engine.catalog
    if cat is None:
        raise ValueError("engine has no catalogue (external ids cannot be mapped)")
    if cat.n_items == 0:
        raise ValueError("engine's catalogue has no items")
    rng = np.random.default_rng(0)
    known = cat.users.ids[: max(n - 1, 0)].tolist()
    ids = cat.users.ids
    unknown = (int(ids.max()) + 1 if len(ids) and ids.max() < 2**62 else -1) if _id_kind(ids) == "int" \
        else "__warmup_unknown_user__"
    items = cat.items.ids
    reqs = []
    for i, u in enumerate(known + [unknown] * (n - len(known))):
        hist = [] if i == n - 1 else items[rng.integers(0, len(items), size=int(rng.integers(0, 6)))].tolist()
        reqs.append(SimpleNamespace(user_id=u, history=hist, exclude_item_ids=[], context={},
                                    timestamp=None, k=10, debug=False))
    enc = build_requests(cat, reqs, int(time.time()))
    k = min(10, cat.n_items)
    for _ in range(2):
        res = engine.rank(enc.requests, k)
        if res.items.shape != (n, k):
            raise ValueError(f"warm-up: Engine.rank returned items of shape {res.items.shape}, expected {(n, k)}")
        if res.items.max(initial=-1) >= cat.n_items:
            raise ValueError("warm-up: Engine.rank returned item indices outside the catalogue")
    one = enc.requests.take(np.arange(1))
    costs = []
    for _ in range(3):
        timings: dict[str, float] = {}
        engine.rank(one, k, timings=timings)
        costs.append(timings["retrieval"])
    return min(costs)


class ServiceState:
    """The served engine, its bundle path, readiness, and reloads.

    ``loader(path) -> Engine`` defaults to :func:`recsys.training.load_engine`.
    """

    def __init__(
        self,
        cfg: ServingConfig,
        bundle: str | Path | None = None,
        metrics: ServiceMetrics | None = None,
        loader: Callable[[str | Path], Engine] | None = None,
    ) -> None:
        self.cfg = cfg
        self.bundle = Path(bundle) if bundle is not None else None
        self.metrics = metrics or ServiceMetrics()
        self._loader = loader
        self._current: Loaded | None = None
        self._swap_lock = threading.Lock()
        self._reload_lock = threading.Lock()
        self.status = "loading"  # loading | ready | failed
        self.error: str | None = None
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # -- the current engine ---------------------------------------------------------------------------
    @property
    def current(self) -> Loaded | None:
        """The installed engine (read once per request; never changes under a request)."""
        return self._current

    @property
    def ready(self) -> bool:
        return self._current is not None

    @property
    def version(self) -> str | None:
        cur = self._current
        return None if cur is None else cur.engine.version

    def install(self, engine: Engine, source: str, warmup: bool = True) -> None:
        """Warm up ``engine`` and make it the served one (used by tests and by :meth:`reload`)."""
        floor = self.cfg.min_timeout_ms
        if warmup:
            retrieval_ms = warm_up(engine, self.cfg.warmup_requests)
            if retrieval_ms is not None:
                share = self.cfg.stage_shares.get("retrieval", 1.0)
                floor = max(floor, float(math.ceil(FLOOR_MARGIN * retrieval_ms / share)))
                if floor > self.cfg.budget_ms:
                    logger.warning("model %s: retrieval alone takes %.1f ms; the default budget_ms %g cannot be "
                                   "met (every request without a longer timeout_ms will answer 504)",
                                   engine.version, retrieval_ms, self.cfg.budget_ms)
        loaded = Loaded(engine, source, time.time(), floor)
        with self._swap_lock:
            self._current = loaded  # the atomic swap: one reference assignment
            self.status, self.error = "ready", None
        self.metrics.set_model(engine.version or "")
        logger.info("serving model version %s from %s", engine.version, source)

    # -- loading --------------------------------------------------------------------------------------
    def _load(self, path: Path) -> Engine:
        if self._loader is not None:
            return self._loader(path)
        from recsys.training import load_engine

        return load_engine(path)

    def load_initial(self) -> None:
        """Load, verify and warm up the configured bundle (blocking). Raises on failure (status 'failed')."""
        if self.bundle is None:
            raise ValueError("ServiceState: no bundle path to load")
        try:
            self.reload(None)
        except Exception as exc:
            self.status, self.error = "failed", str(exc)
            raise

    def load_in_background(self) -> threading.Thread:
        """Start :meth:`load_initial` on a thread (readyz answers 503 until it is done)."""

        def run() -> None:
            try:
                self.load_initial()
            except Exception as exc:  # reported by readyz; the process stays up for its health checks
                logger.error("initial bundle load failed: %s", exc)

        t = threading.Thread(target=run, name="bundle-load", daemon=True)
        t.start()
        return t

    def reload(self, path: str | Path | None = None) -> dict:
        """Load ``path`` (default: the configured bundle folder, i.e. its current ``latest``), verify, check,
        warm up and swap it in. Returns ``{status, model_version, previous_version, load_ms}`` with status
        ``reloaded`` or ``unchanged`` (that version folder is already served).

        Raises :class:`ReloadBusy` when another reload runs, :class:`ReloadRefused` (old engine kept) when the
        bundle is missing, corrupt, incompatible or fails its warm-up.
        """
        if not self._reload_lock.acquire(blocking=False):
            raise ReloadBusy("another reload is in progress")
        try:
            return self._reload(path)
        finally:
            self._reload_lock.release()

    def _reload(self, path: str | Path | None) -> dict:
        t0 = time.perf_counter()
        target = Path(path) if path is not None else self.bundle
        if target is None:
            raise ReloadRefused("no bundle path given and the service was not started from a bundle")
        old = self._current
        previous = None if old is None else old.engine.version
        try:
            vdir = resolve_version(target)
            source = str(vdir)
            if old is not None and old.source == source:
                return {"status": "unchanged", "model_version": previous, "previous_version": previous,
                        "load_ms": (time.perf_counter() - t0) * 1000}
            engine = self._load(vdir)
            if old is not None:
                check_compatible(old.engine, engine)
            self.install(engine, source)
        except Exception as exc:
            self.metrics.reloads.labels(outcome="failed").inc()
            why = f"{type(exc).__name__}: {exc}" if not isinstance(exc, (BundleError, ReloadRefused)) else str(exc)
            logger.error("bundle %s refused (%s): %s", target,
                         f"still serving {previous}" if previous else "nothing loaded", why)
            raise ReloadRefused(why) from exc
        self.metrics.reloads.labels(outcome="ok").inc()
        return {"status": "reloaded", "model_version": engine.version, "previous_version": previous,
                "load_ms": (time.perf_counter() - t0) * 1000}

    # -- watching `latest` ----------------------------------------------------------------------------
    def start_watcher(self) -> None:
        """Poll the bundle folder's ``latest`` every ``watch_interval_s`` (no-op when 0 or no bundle)."""
        if self.cfg.watch_interval_s <= 0 or self.bundle is None or self._watcher is not None:
            return
        self._stop.clear()
        self._watcher = threading.Thread(target=self._watch, name="bundle-watch", daemon=True)
        self._watcher.start()

    def stop_watcher(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(timeout=5)
            self._watcher = None

    def _watch(self) -> None:
        last_failed: str | None = None
        last_warning = ""
        while not self._stop.wait(self.cfg.watch_interval_s):
            try:
                vdir = str(resolve_version(self.bundle))
            except Exception as exc:
                if str(exc) != last_warning:  # once per distinct problem, not every poll
                    logger.warning("bundle watch: %s", exc)
                    last_warning = str(exc)
                continue
            last_warning = ""
            cur = self._current
            if (cur is not None and cur.source == vdir) or vdir == last_failed:
                continue
            logger.info("bundle watch: %s moved to %s; reloading", self.bundle, vdir)
            try:
                self.reload(vdir)
                last_failed = None
            except ReloadBusy:
                continue
            except ReloadRefused:
                last_failed = vdir


def check_compatible(old: Engine, new: Engine) -> None:
    """Refuse a new engine that clients could not call the same way: no catalogue, or a change in the type
    (int / str) of user or item ids."""
    if new.catalog is None:
        raise ReloadRefused("incompatible bundle: the engine has no catalogue")
    if old.catalog is None:
        return
    for what in ("users", "items"):
        a = _id_kind(getattr(old.catalog, what).ids)
        b = _id_kind(getattr(new.catalog, what).ids)
        if "empty" not in (a, b) and a != b:
            raise ReloadRefused(f"incompatible bundle: {what[:-1]} ids are {b} in the new bundle but {a} in the "
                                "served one (clients send ids as the dataset has them)")
