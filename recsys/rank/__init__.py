"""Heavy ranking: multi-task networks (MMoE, shared-bottom, single-task), ESMM loss, and their training loop."""

from recsys.rank.mmoe import (
    ARCHITECTURES,
    MLP,
    Gate,
    MMoE,
    RankerNet,
    SharedBottom,
    SingleTask,
    TargetAttentionPooling,
    build_multitask,
    multitask_loss,
    ranker_input_dim,
    task_log_probabilities,
    task_probabilities,
    validate_esmm_parent,
)
from recsys.rank.trainer import FitHistory, ModelFitError, TrainConfig, fit_multitask, predict, task_logloss

__all__ = [
    "ARCHITECTURES",
    "FitHistory",
    "Gate",
    "MLP",
    "MMoE",
    "ModelFitError",
    "RankerNet",
    "SharedBottom",
    "SingleTask",
    "TargetAttentionPooling",
    "TrainConfig",
    "build_multitask",
    "fit_multitask",
    "multitask_loss",
    "predict",
    "ranker_input_dim",
    "task_log_probabilities",
    "task_logloss",
    "task_probabilities",
    "validate_esmm_parent",
]
