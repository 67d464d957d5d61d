"""Heavy ranking: multi-task networks (MMoE, shared-bottom, single-task), ESMM loss, their training loop, and
the ranking stage. Names are imported lazily, so ``import recsys.rank.config`` does not pull in torch."""

from __future__ import annotations

import importlib

_EXPORTS = {
    **{name: "mmoe" for name in (
        "ARCHITECTURES", "MLP", "Gate", "MMoE", "RankerNet", "SharedBottom", "SingleTask", "TargetAttentionPooling",
        "build_multitask", "multitask_loss", "ranker_input_dim", "task_log_probabilities", "task_probabilities",
        "validate_esmm_parent")},
    **{name: "trainer" for name in ("FitHistory", "ModelFitError", "fit_multitask", "predict", "task_logloss")},
    "TrainConfig": "config",
    "RankConfig": "config",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        return getattr(importlib.import_module(f"recsys.rank.{_EXPORTS[name]}"), name)
    raise AttributeError(f"module 'recsys.rank' has no attribute {name!r}")
