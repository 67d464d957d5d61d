"""The value model: one ranking score per (request, candidate) from the heavy ranker's task probabilities.

Shapes: B requests, C candidates; every probability array is ``(B, C)`` (NaN at padding stays NaN).

Formulas (:data:`FORMULAS`, selected by :attr:`ValueConfig.formula`):

* ``"click_like"`` (default): ``value = p_click * (1 + a * p_like_given_click)`` where ``p_like`` is the
  entire-space probability ``P(click and like)`` and ``p_like_given_click = p_like / p_click``; so
  ``value = p_click + a * p_like``: the expected number of clicks plus ``a`` times the expected number of
  likes of showing the item. With ``a = 1`` this is the synthetic world's true value
  ``EV = P(click) * (1 + P(like | click))`` (:mod:`recsys.data.synthetic`), so ranking by it is the
  oracle's objective. ``click_task`` / ``like_task`` name the tasks (empty: the first and the second task
  of ``probs``, in order); without a second task the value is ``p_click``.
* ``"weighted_sum"``: ``value = sum_t weights[t] * p_t`` over the tasks named in ``weights`` (empty: every
  task of ``probs`` with weight 1). A linear utility of expected engagements, the usual multi-task score
  combination (e.g. Zhao et al., "Recommending What Video to Watch Next", RecSys 2019, section 4).

Both are expected-utility scores of entire-space probabilities, so calibrated probabilities (see
:mod:`recsys.rank.stage`, recalibration after negative downsampling) make the weights mean what they say.

**Exposure.** A heavy ranker trained with ``rank.exposure`` also outputs ``p_exposure`` (key
:data:`EXPOSURE`): the probability that the logging policy shows the candidate to the user at all, while the
task probabilities are conditional on being shown. Both formulas then return
``value = p_exposure ** exposure_power * base`` (``base`` the formula above, computed from the other
tasks). ``exposure_power = 1`` makes the value the expected *logged* engagement ``P(shown) * E[gain | shown]``,
the quantity offline metrics on logged engagements reward (a test-window click can only be on a shown item);
``exposure_power = 0`` is the value of showing the item, what the engine earns once it decides what is shown.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Mapping

import numpy as np

from recsys.configlib import ConfigError

__all__ = ["EXPOSURE", "FORMULAS", "ValueConfig", "value"]

#: the probability key of the exposure head (``rank.exposure``); not a dataset label
EXPOSURE = "exposure"


@dataclasses.dataclass(frozen=True)
class ValueConfig:
    """The value model (``rank.value`` section of the engine config).

    formula     one of :data:`FORMULAS` (``click_like`` | ``weighted_sum``)
    weights     weighted_sum: {task: weight}; empty = every task with weight 1
    a           click_like: value = p_click * (1 + a * p_like / p_click)
    click_task  click_like: the click task (empty: the first task)
    like_task   click_like: the like task, an entire-space probability (empty: the second task, if any)
    exposure_power  with an ``exposure`` probability: value = p_exposure ** exposure_power * base (>= 0)
    """

    formula: str = "click_like"
    weights: dict[str, float] = dataclasses.field(default_factory=dict)
    a: float = 1.0
    click_task: str = ""
    like_task: str = ""
    exposure_power: float = 1.0

    def __post_init__(self) -> None:
        if self.formula not in FORMULAS:
            raise ConfigError(f"rank.value.formula: unknown formula {self.formula!r}; expected one of "
                              f"{sorted(FORMULAS)}")
        bad = {k: v for k, v in self.weights.items()
               if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v)}
        if bad:
            raise ConfigError(f"rank.value.weights: weights must be finite numbers, got {bad}")
        if isinstance(self.a, bool) or not isinstance(self.a, (int, float)) or not math.isfinite(self.a):
            raise ConfigError(f"rank.value.a: must be a finite number, got {self.a!r}")
        e = self.exposure_power
        if isinstance(e, bool) or not isinstance(e, (int, float)) or not (math.isfinite(e) and e >= 0):
            raise ConfigError(f"rank.value.exposure_power: must be a finite number >= 0, got {e!r}")
        if EXPOSURE in (self.click_task, self.like_task) or EXPOSURE in self.weights:
            raise ConfigError(f"rank.value: {EXPOSURE!r} is the exposure head, not a task; its weight is "
                              "rank.value.exposure_power")
        if self.click_task and self.click_task == self.like_task:
            raise ConfigError(f"rank.value: click_task and like_task are both {self.click_task!r}")


def _task(probs: Mapping[str, np.ndarray], name: str, field: str) -> np.ndarray:
    if name not in probs:
        raise ValueError(f"rank.value.{field}: task {name!r} is not among the ranker's tasks {list(probs)}")
    return np.asarray(probs[name], dtype=np.float64)


def _click_like(probs: Mapping[str, np.ndarray], cfg: ValueConfig) -> np.ndarray:
    tasks = list(probs)
    click = _task(probs, cfg.click_task, "click_task") if cfg.click_task else np.asarray(probs[tasks[0]], np.float64)
    click_name = cfg.click_task or tasks[0]
    if cfg.like_task:
        like = _task(probs, cfg.like_task, "like_task")
    else:
        rest = [t for t in tasks if t != click_name]
        if not rest:
            return click.copy()
        like = np.asarray(probs[rest[0]], dtype=np.float64)
    # p_click * (1 + a * p_like / p_click) == p_click + a * p_like (also where p_click == 0)
    return click + cfg.a * like


def _weighted_sum(probs: Mapping[str, np.ndarray], cfg: ValueConfig) -> np.ndarray:
    weights = dict(cfg.weights) or {t: 1.0 for t in probs}
    out = None
    for t, w in weights.items():
        term = float(w) * _task(probs, t, f"weights.{t}")
        out = term if out is None else out + term
    return out


#: name -> function(probs, cfg) -> (B, C); error messages list these keys.
FORMULAS: dict[str, Callable[[Mapping[str, np.ndarray], ValueConfig], np.ndarray]] = {
    "click_like": _click_like,
    "weighted_sum": _weighted_sum,
}


def value(probs: Mapping[str, np.ndarray], cfg: ValueConfig | None = None) -> np.ndarray:
    """``(B, C)`` float64 value of each candidate from ``probs`` {task: (B, C) entire-space probability}, plus
    optionally :data:`EXPOSURE` (task order matters only for the defaults of ``click_like``); see the module
    docstring for the formulas.
    Unknown task names in ``cfg`` raise ValueError listing the tasks of ``probs``."""
    cfg = ValueConfig() if cfg is None else cfg
    if not isinstance(cfg, ValueConfig):
        raise TypeError(f"value: cfg must be a ValueConfig, got {type(cfg).__name__}")
    shapes = {t: np.shape(p) for t, p in probs.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"value: task probabilities must share one shape, got {shapes}")
    tasks = {t: p for t, p in probs.items() if t != EXPOSURE}
    if not tasks:
        raise ValueError("value: no task probabilities given")
    base = FORMULAS[cfg.formula](tasks, cfg)
    if EXPOSURE not in probs or cfg.exposure_power == 0:
        return base
    return np.asarray(probs[EXPOSURE], dtype=np.float64) ** float(cfg.exposure_power) * base
