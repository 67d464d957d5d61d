"""Training loop of the multi-task heavy ranker: mini-batch Adam, early stopping, deterministic per seed.

Shapes: ``R`` rows (examples), ``T`` tasks. A model is any ``nn.Module`` whose ``forward(**batch)`` returns
``(B, T)`` logits, where ``batch`` holds the rows of the input tensors (``dict[str, Tensor]``, each with
``R`` rows), e.g. ``{"x": ...}`` for a bare multi-task core, or ``{"cat", "dense", "hist", "hist_mask",
"item_idx"}`` for :class:`~recsys.rank.mmoe.RankerNet`.

Early stopping monitors the **validation mean logloss**: the unweighted mean over tasks of the binary
cross-entropy of the *entire-space* probabilities (:func:`~recsys.rank.mmoe.task_probabilities`) against the
labels. (Logloss rather than AUC because the ranker's probabilities feed a value model and must be
calibrated, and AUC ignores calibration.) The weights of the best epoch are restored at the end.

Negative downsampling and recalibration live in ``offline_eval/calibration.py``; this module only accepts a
``sample_weight``.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
from typing import Mapping, Sequence

import numpy as np
import torch
from torch import nn

from recsys.configlib import ConfigError
from recsys.rank.config import TrainConfig  # noqa: F401  (re-exported)
from recsys.rank.mmoe import multitask_loss, task_probabilities, validate_esmm_parent

logger = logging.getLogger(__name__)

__all__ = ["FitHistory", "ModelFitError", "TrainConfig", "fit_multitask", "intercept_offsets", "predict",
           "predict_logits", "task_logloss"]


class ModelFitError(RuntimeError):
    """Training diverged (non-finite loss or weights)."""


@dataclasses.dataclass
class FitHistory:
    """Per-epoch record of :func:`fit_multitask` (index = epoch - 1).

    ``train_loss`` mean training loss of the epoch (weighted multi-task loss); ``valid_logloss`` validation
    mean logloss (the early-stopping criterion); ``valid_task_logloss`` per-task validation logloss (T,);
    ``best_epoch`` 1-based epoch whose weights were restored; ``epochs`` epochs run.
    """

    train_loss: list[float] = dataclasses.field(default_factory=list)
    valid_logloss: list[float] = dataclasses.field(default_factory=list)
    valid_task_logloss: list[list[float]] = dataclasses.field(default_factory=list)
    best_epoch: int = 0
    epochs: int = 0

    @property
    def best_valid_logloss(self) -> float:
        return self.valid_logloss[self.best_epoch - 1]


def task_logloss(p: np.ndarray, y: np.ndarray, eps: float = 1e-7, weight: np.ndarray | None = None) -> np.ndarray:
    """Per-task logloss ``-(1/R) sum_r [y log p + (1 - y) log(1 - p)]``, ``p`` clipped to ``[eps, 1 - eps]``;
    with ``weight (R, T)`` the weighted mean ``sum_r w_rt ll_rt / sum_r w_rt`` (NaN for a task of weight 0).

    Shapes: ``p, y (R, T) -> (T,)``.
    """
    p = np.clip(np.asarray(p, dtype=np.float64), eps, 1.0 - eps)
    y = np.asarray(y, dtype=np.float64)
    ll = -(y * np.log(p) + (1.0 - y) * np.log1p(-p))
    if weight is None:
        return ll.mean(axis=0)
    w = np.asarray(weight, dtype=np.float64)
    tot = w.sum(axis=0)
    return np.where(tot > 0, (w * ll).sum(axis=0) / np.where(tot > 0, tot, 1.0), np.nan)


def _check_tensors(tensors: Mapping[str, torch.Tensor], labels: torch.Tensor | None, what: str) -> int:
    if not isinstance(tensors, Mapping) or not tensors:
        raise TypeError(f"{what}: expected a non-empty dict of name -> torch.Tensor (the model's forward kwargs)")
    rows = {}
    for k, v in tensors.items():
        if not isinstance(v, torch.Tensor):
            raise TypeError(f"{what}[{k!r}]: expected a torch.Tensor, got {type(v).__name__}")
        if v.ndim == 0:
            raise ValueError(f"{what}[{k!r}]: expected a tensor with a leading row dimension, got a scalar")
        rows[k] = v.shape[0]
    if len(set(rows.values())) != 1:
        raise ValueError(f"{what}: all tensors need the same number of rows, got {rows}")
    R = next(iter(rows.values()))
    if labels is not None and (labels.ndim != 2 or labels.shape[0] != R):
        raise ValueError(f"{what}: labels must be (R={R}, T), got {tuple(labels.shape)}")
    return R


def _take(tensors: Mapping[str, torch.Tensor], idx: torch.Tensor | slice) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in tensors.items()}


def _logits(model: nn.Module, batch: Mapping[str, torch.Tensor]) -> torch.Tensor:
    out = model(**batch)
    return out[0] if isinstance(out, tuple) else out


@torch.no_grad()
def predict(
    model: nn.Module,
    tensors: Mapping[str, torch.Tensor],
    batch_size: int = 4096,
    esmm_parent: Sequence[int | None] | None = None,
) -> np.ndarray:
    """Entire-space probabilities ``(R, T)`` float64 (eval mode, batched; the model's mode is restored).

    Pass the same ``esmm_parent`` as in training, otherwise an ESMM child's output is its conditional
    probability ``p_{j|i}`` (plain sigmoid) instead of ``p_i * p_{j|i}``.
    """
    R = _check_tensors(tensors, None, "predict")
    if batch_size < 1:
        raise ValueError(f"predict: batch_size must be >= 1, got {batch_size}")
    was_training = model.training
    model.eval()
    try:
        out = [
            task_probabilities(_logits(model, _take(tensors, slice(s, s + batch_size))), esmm_parent)
            for s in range(0, R, batch_size)
        ]
    finally:
        model.train(was_training)
    if not out:
        return np.zeros((0, 0), dtype=np.float64)
    return torch.cat(out).double().numpy()


def fit_multitask(
    model: nn.Module,
    train_tensors: Mapping[str, torch.Tensor],
    train_labels: torch.Tensor,
    valid_tensors: Mapping[str, torch.Tensor],
    valid_labels: torch.Tensor,
    cfg: TrainConfig,
    esmm_parent: Sequence[int | None] | None = None,
    sample_weight: torch.Tensor | None = None,
    valid_weight: torch.Tensor | None = None,
) -> FitHistory:
    """Train ``model`` in place with early stopping on the validation mean logloss; restore the best weights.

    ``train_labels (R, T)`` and ``valid_labels (R_valid, T)`` are 0/1 entire-space labels (an ESMM child's
    label is 1 only when its parent's is: e.g. ``like`` means clicked and liked). ``sample_weight (R,)`` or
    ``(R, T)`` weights the training loss (:func:`~recsys.rank.mmoe.multitask_loss`), ``valid_weight``
    ``(R_valid, T)`` the validation logloss of each task (:func:`task_logloss`; a task whose validation
    weights are all 0 is left out of the mean).

    Deterministic for ``cfg.seed`` given the same initial weights: the global torch RNG is forked and seeded
    (dropout), and rows are shuffled with a dedicated ``torch.Generator`` seeded with ``cfg.seed``.
    Raises :class:`ModelFitError` on a non-finite loss. The model is left in eval mode.
    """
    R = _check_tensors(train_tensors, train_labels, "fit_multitask: train")
    Rv = _check_tensors(valid_tensors, valid_labels, "fit_multitask: valid")
    T = train_labels.shape[1]
    if valid_labels.shape[1] != T:
        raise ValueError(f"fit_multitask: valid_labels has {valid_labels.shape[1]} tasks, train_labels has {T}")
    if R == 0 or Rv == 0:
        raise ValueError(f"fit_multitask: need training and validation rows, got {R} and {Rv}")
    parents = validate_esmm_parent(esmm_parent, T)
    task_weights = torch.tensor(cfg.task_weights if cfg.task_weights else (1.0,) * T, dtype=torch.float32)
    if task_weights.shape != (T,):
        raise ConfigError(f"rank.train.task_weights: need {T} weights (one per task), got {cfg.task_weights}")
    if sample_weight is not None and sample_weight.shape not in ((R,), (R, T)):
        raise ValueError(f"fit_multitask: sample_weight must be (R,) or (R, T) = ({R}, {T}), got "
                         f"{tuple(sample_weight.shape)}")
    for t, p in enumerate(parents):
        if p is not None:
            bad = int(((train_labels[:, t] > 0) & (train_labels[:, p] <= 0)).sum())
            if bad:
                logger.warning("fit_multitask: %d training rows have task %d positive but its ESMM parent %d "
                               "negative; the entire-space label should imply the parent's", bad, t, p)
    y_train = train_labels.to(torch.float32)
    y_valid = valid_labels.detach().cpu().numpy()
    if valid_weight is not None and tuple(valid_weight.shape) != (Rv, T):
        raise ValueError(f"fit_multitask: valid_weight must be (R_valid, T) = ({Rv}, {T}), got "
                         f"{tuple(valid_weight.shape)}")
    w_valid = None if valid_weight is None else valid_weight.detach().cpu().numpy()

    prev_threads = torch.get_num_threads()
    torch.set_num_threads(cfg.threads)
    history = FitHistory()
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed)
            shuffler = torch.Generator().manual_seed(cfg.seed)
            opt = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
            best_loss, best_state, since_best = math.inf, copy.deepcopy(model.state_dict()), 0
            for epoch in range(1, cfg.max_epochs + 1):
                model.train()
                perm = torch.randperm(R, generator=shuffler)
                total, n_seen = 0.0, 0
                for s in range(0, R, cfg.batch_size):
                    idx = perm[s : s + cfg.batch_size]
                    logits = _logits(model, _take(train_tensors, idx))
                    w = None if sample_weight is None else sample_weight[idx]
                    loss = multitask_loss(logits, y_train[idx], task_weights, parents, w)
                    if not torch.isfinite(loss):
                        raise ModelFitError(f"fit_multitask: non-finite training loss at epoch {epoch}, step "
                                            f"{s // cfg.batch_size}; lower rank.train.lr or check the inputs")
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    total += float(loss.detach()) * len(idx)
                    n_seen += len(idx)
                p_valid = predict(model, valid_tensors, max(cfg.batch_size, 4096), parents)
                per_task = task_logloss(p_valid, y_valid, weight=w_valid)
                mean_ll = float(np.nanmean(per_task)) if np.isfinite(per_task).any() else math.nan
                history.train_loss.append(total / n_seen)
                history.valid_logloss.append(mean_ll)
                history.valid_task_logloss.append([float(v) for v in per_task])
                history.epochs = epoch
                logger.debug("epoch %d: train loss %.5f, valid mean logloss %.5f %s", epoch, total / n_seen,
                             mean_ll, np.round(per_task, 5).tolist())
                if not math.isfinite(mean_ll):
                    raise ModelFitError(f"fit_multitask: non-finite validation logloss at epoch {epoch}")
                if mean_ll < best_loss:
                    best_loss, since_best, history.best_epoch = mean_ll, 0, epoch
                    best_state = copy.deepcopy(model.state_dict())
                else:
                    since_best += 1
                    if since_best >= cfg.patience:
                        break
            model.load_state_dict(best_state)
    finally:
        torch.set_num_threads(prev_threads)
    model.eval()
    logger.info("fit_multitask: %d epochs, best epoch %d, valid mean logloss %.5f", history.epochs,
                history.best_epoch, history.best_valid_logloss)
    return history


@torch.no_grad()
def predict_logits(model: nn.Module, tensors: Mapping[str, torch.Tensor], batch_size: int = 4096) -> np.ndarray:
    """``(R, T)`` float64 logits of the heads (eval mode, batched; the model's mode is restored)."""
    R = _check_tensors(tensors, None, "predict_logits")
    was_training = model.training
    model.eval()
    try:
        out = [_logits(model, _take(tensors, slice(s, s + batch_size))) for s in range(0, R, batch_size)]
    finally:
        model.train(was_training)
    return torch.cat(out).double().numpy() if out else np.zeros((0, 0))


def intercept_offsets(
    logits: np.ndarray,
    labels: np.ndarray,
    esmm_parent: Sequence[int | None] | None = None,
    weight: np.ndarray | None = None,
    bound: float = 4.0,
) -> np.ndarray:
    """Per-head logit offsets ``delta (T,)`` that make each task's weighted mean entire-space probability equal
    its weighted label mean on held-out rows: ``sum_r w_rt P_t(l_r + delta) = sum_r w_rt y_rt``.

    Early stopping on a few epochs leaves the heads' intercepts where the descent was when the validation loss
    turned, which moves the level of the probabilities by 5-20% from run to run; this one-parameter-per-head
    correction (a Platt scaling with the slope fixed at 1) sets the level on data the weights were not fitted
    on, and leaves every ranking unchanged. Heads are solved parents first (an ESMM child's ``P`` includes its
    parent's corrected probability); bisection on ``[-bound, bound]``; a head with no positive or no negative
    weight gets 0. Shapes: ``logits, labels, weight (R, T)``.
    """
    L = np.asarray(logits, dtype=np.float64)
    Y = np.asarray(labels, dtype=np.float64)
    W = np.ones_like(L) if weight is None else np.asarray(weight, dtype=np.float64)
    T = L.shape[1]
    parents = validate_esmm_parent(esmm_parent, T)
    delta = np.zeros(T)
    log_p: dict[int, np.ndarray] = {}

    def logsig(x: np.ndarray) -> np.ndarray:
        return -np.logaddexp(0.0, -x)

    def solve(t: int) -> np.ndarray:
        if t in log_p:
            return log_p[t]
        base = 0.0 if parents[t] is None else solve(parents[t])
        w, y = W[:, t], Y[:, t]
        target = float((w * y).sum())
        if target > 0 and float((w * (1.0 - y)).sum()) > 0:
            lo, hi = -bound, bound
            for _ in range(60):
                mid = 0.5 * (lo + hi)
                if float((w * np.exp(base + logsig(L[:, t] + mid))).sum()) < target:
                    lo = mid
                else:
                    hi = mid
            delta[t] = 0.5 * (lo + hi)
        log_p[t] = base + logsig(L[:, t] + delta[t])
        return log_p[t]

    for t in range(T):
        solve(t)
    return delta
