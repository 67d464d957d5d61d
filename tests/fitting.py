"""Test helpers: fit contexts over explicit frames, for stage tests that do not go through recsys.training."""

from __future__ import annotations

from recsys.engine import Engine
from recsys.stages.base import FitContext


def fit_context(ds, catalog, window_df, past_df, upstream=None, features=None, valid=None) -> FitContext:
    """A :class:`FitContext` training on ``window_df`` with histories from ``past_df``; ``upstream`` a fitted
    candidate stage (wrapped in an Engine with ``retrieve_k``) or an Engine; ``features`` one FeatureContext
    used for every stage config."""
    return FitContext(ds, catalog, None, "window", past_df, upstream=upstream,
                      features=None if features is None else (lambda _cfg: features), valid=valid, train=window_df)


def upstream(retrieval, retrieve_k: int, stages=(), catalog=None) -> Engine:
    """The engine that serves a stage in a test: ``retrieval`` at ``retrieve_k``, then ``stages`` [(stage, k)]."""
    return Engine(retrieval, list(stages), retrieve_k, name="upstream", catalog=catalog)
