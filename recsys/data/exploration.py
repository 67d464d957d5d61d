"""An exploration log for the synthetic world: new sessions shown by a stochastic logging policy whose
item-position propensities are exact, with clicks drawn from the world's oracle (for off-policy evaluation).

The world's own logging policy (:mod:`recsys.data.synthetic`: top L of a noisy score over sampled candidates)
has no tractable propensities, so this module simulates *new* sessions with its own random stream and leaves
the world's dataset untouched. Shapes: U contexts, N items, S sessions, L slate positions.

**Contexts.** One per user active in the given window (the split's test window): the user, time, hour and
device of the user's first event there, i.e. exactly the request the offline evaluator builds for that user
(:class:`offline_eval.evaluator.EvalData`, which keeps only the users with an engagement in the window; here
every user of the window is a context), so a target policy ranks each context as in evaluation. Session
``s`` (of S) gets context ``perm[s mod U]`` (a seeded permutation): every context gets ``S / U`` sessions up to
one.

**Logging policy.** For a context (user u at time t), over the items created by t::

    score(u, i) = u_u . v_i + w_pop log pop_i          (stale taste, as the world's own policy: no drift)
    p(i | x)    = (1 - eps) softmax_i(score / T) + eps / n_created(t)

and each of the L positions shows an item drawn **independently** from ``p``, so the item-position propensity
is ``p_k(i | x) = p(i | x)`` exactly (no Monte Carlo) for every position, with full support over the created
items (``p >= eps / n_created``). A slate may show an item twice; this is harmless here because the oracle's
click model has no interaction between the items of a slate (a click at position k depends only on the user,
the item at k, k, the hour and the device), which is also the item-position model the list estimator assumes.
Clicks: ``Bernoulli(oracle.p_click(u, i, t, position=k, hour, device))``.

The temperature trades coverage for variance: a low T concentrates the log on the items good policies pick
(more matches, smaller intervals for them) but starves the rest; ``eps`` bounds every importance weight by
``n_created / eps``.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np
import pandas as pd

from recsys.data.synthetic import Oracle

logger = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExploreConfig:
    """The exploration log's settings (see the module docstring)."""

    sessions: int = 100_000
    slate_size: int = 10
    temperature: float = 0.25  # chosen on the demo world: see notes/readme-ope.md
    epsilon: float = 0.2
    popularity_weight: float = 0.3
    seed: int = 0
    max_cells: int = 1 << 22  # contexts x items per block of the probability matrix

    def __post_init__(self) -> None:
        if self.sessions < 1:
            raise ValueError(f"--sessions: must be >= 1, got {self.sessions}")
        if self.slate_size < 1:
            raise ValueError(f"--slate-size: must be >= 1, got {self.slate_size}")
        if not self.temperature > 0:
            raise ValueError(f"--temperature: must be > 0, got {self.temperature}")
        if not 0 < self.epsilon <= 1:
            raise ValueError(f"--epsilon: must be in (0, 1], got {self.epsilon}")


def window_contexts(window: pd.DataFrame) -> pd.DataFrame:
    """One row per user of ``window`` (interactions): the user's first event's user_id, timestamp, hour,
    device (the evaluator's request for that user), in first-event order."""
    for c in ("user_id", "timestamp"):
        if c not in window.columns:
            raise ValueError(f"exploration: the window's interactions have no {c!r} column")
    w = window.iloc[np.argsort(window["timestamp"].to_numpy(), kind="stable")]
    first = w.drop_duplicates("user_id", keep="first")
    out = pd.DataFrame({"user_id": first["user_id"].to_numpy(), "timestamp": first["timestamp"].to_numpy(np.int64)})
    out["hour"] = (first["hour"].to_numpy(np.int64) if "hour" in first.columns
                   else (out["timestamp"].to_numpy() // 3600) % 24)
    out["device"] = first["device"].astype(str).to_numpy() if "device" in first.columns else "desktop"
    if len(out) == 0:
        raise ValueError("exploration: the window has no interactions (no user to simulate sessions for)")
    return out.reset_index(drop=True)


def logging_probabilities(oracle: Oracle, user_ids: np.ndarray, timestamps: np.ndarray,
                          cfg: ExploreConfig) -> np.ndarray:
    """(B,) contexts -> (B, N) float64 ``p(i | x)`` of the logging policy (columns: ``oracle.item_ids``; rows sum
    to 1; 0 for items not created by the context's time)."""
    a = oracle.arrays
    u = oracle.user_index(user_ids)
    ts = np.asarray(timestamps, np.int64)
    vec = a["item_vec"].astype(np.float64)
    score = a["user_vec"][u].astype(np.float64) @ vec.T + cfg.popularity_weight * a["item_log_pop"].astype(np.float64)
    created = oracle.created_at[None, :] <= ts[:, None]  # (B, N)
    if not created.any(axis=1).all():
        raise ValueError("exploration: a context has no item created by its time")
    z = np.where(created, score / cfg.temperature, -np.inf)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    soft = e / e.sum(axis=1, keepdims=True)
    uniform = created / created.sum(axis=1, keepdims=True)
    return (1.0 - cfg.epsilon) * soft + cfg.epsilon * uniform


def explore(oracle: Oracle, contexts: pd.DataFrame, cfg: ExploreConfig) -> pd.DataFrame:
    """Simulate ``cfg.sessions`` sessions on ``contexts`` (:func:`window_contexts`) -> the bandit-log table
    (:mod:`recsys.data.bandit_log` columns plus hour and device), one row per (session, position)."""
    rng = np.random.default_rng(np.random.SeedSequence([int(cfg.seed), 0x0E7A]))  # its own stream
    n_ctx, s, l = len(contexts), cfg.sessions, cfg.slate_size
    ctx = rng.permutation(n_ctx)[np.arange(s) % n_ctx]  # (S,) context of each session
    u_draw = rng.random((s, l))
    u_click = rng.random((s, l))
    items = np.empty((s, l), np.int64)
    prop = np.empty((s, l), np.float64)
    n = len(oracle.item_ids)
    step = max(1, cfg.max_cells // max(n, 1))
    order = np.argsort(ctx, kind="stable")  # sessions grouped by context
    bounds = np.searchsorted(ctx[order], np.arange(0, n_ctx + step, step))
    for j, a in enumerate(range(0, n_ctx, step)):
        b = min(a + step, n_ctx)
        p = logging_probabilities(oracle, contexts["user_id"].to_numpy()[a:b], contexts["timestamp"].to_numpy()[a:b],
                                  cfg)  # (b - a, N)
        cum = np.cumsum(p, axis=1)
        cum /= cum[:, -1:]  # exactly 1 from the last created item on: a uniform in [0, 1) never draws past it
        sess = order[bounds[j]:bounds[j + 1]]
        row = ctx[sess] - a  # (m,) row of each session in this block
        flat = (cum + np.arange(b - a)[:, None] * 2.0).ravel()  # rows offset by 2: one searchsorted for all
        idx = np.searchsorted(flat, (u_draw[sess] + 2.0 * row[:, None]).ravel(), side="right").reshape(len(sess), l)
        idx -= row[:, None] * n
        idx = np.clip(idx, 0, n - 1)
        items[sess] = idx
        prop[sess] = p[row[:, None], idx]
    user = contexts["user_id"].to_numpy()[ctx]
    ts = contexts["timestamp"].to_numpy(np.int64)[ctx]
    hour = contexts["hour"].to_numpy(np.int64)[ctx]
    device = contexts["device"].to_numpy()[ctx]
    pos = np.broadcast_to(np.arange(l), (s, l))
    rep = lambda x: np.repeat(x, l)  # noqa: E731
    pc = oracle.p_click(rep(user), oracle.item_ids[items.ravel()], rep(ts), position=pos.ravel(), hour=rep(hour),
                        device=rep(device))
    click = (u_click.ravel() < pc).astype(np.int64)
    table = pd.DataFrame({
        "session_id": np.repeat(np.arange(s, dtype=np.int64), l),
        "timestamp": rep(ts),
        "user_id": rep(user),
        "position": pos.ravel().astype(np.int64),
        "item_id": oracle.item_ids[items.ravel()],
        "click": click,
        "propensity": prop.ravel(),
        "hour": rep(hour),
        "device": rep(device).astype(str),
    })
    logger.info("exploration log: %d sessions x %d positions on %d contexts, CTR %.4f", s, l, n_ctx, click.mean())
    return table


def explore_meta(cfg: ExploreConfig, oracle: Oracle, window: str, n_contexts: int) -> dict:
    """log.yaml content of an exploration log (see :mod:`recsys.data.bandit_log`)."""
    return {
        "name": f"explore-{window}-seed{cfg.seed}",
        "slate_size": cfg.slate_size,
        "propensity": "item_position",
        "policy": (f"each position drawn independently from (1 - {cfg.epsilon}) softmax((u.v + "
                   f"{cfg.popularity_weight} log pop) / {cfg.temperature}) + {cfg.epsilon} uniform over the items "
                   "created by the session's time (recsys.data.exploration)"),
        "source": f"recsys.data.exploration on the synthetic world seed {oracle.params.get('seed')}",
        "n_items": int(len(oracle.item_ids)),
        "window": window,
        "contexts": int(n_contexts),
        "explore": dataclasses.asdict(cfg),
    }


__all__ = ["ExploreConfig", "explore", "explore_meta", "logging_probabilities", "window_contexts"]
