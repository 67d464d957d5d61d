"""Configuration of the heavy ranker (the ``rank`` section): light, no torch import, so that
:mod:`recsys.config` can aggregate it without loading the model code."""

from __future__ import annotations

import dataclasses
import enum
import math

from recsys.configlib import ConfigError
from recsys.features import FeatureConfig
from recsys.graph import GraphConfig
from recsys.rank.value import EXPOSURE, ValueConfig

ANY_TASK = "__any__"  # auxiliary head P_s(any task positive), for recalibration without a cover task
# must equal the keys of recsys.rank.mmoe.ARCHITECTURES (checked by a test)
ARCHITECTURE_NAMES = ("mmoe", "shared_bottom", "single_task")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training settings of the heavy ranker.

    ``lr`` Adam learning rate; ``weight_decay`` L2 penalty (Adam's ``weight_decay``); ``batch_size`` rows per
    step; ``max_epochs`` upper bound on epochs; ``patience`` epochs without improvement of the validation
    mean logloss before stopping; ``seed`` seeds initialisation-independent randomness of ``fit`` (shuffling,
    dropout); ``threads`` torch intra-op threads during ``fit`` (restored afterwards); ``task_weights``
    per-task loss weights (empty = all 1).
    """

    lr: float = 1e-3
    weight_decay: float = 0.0
    batch_size: int = 512
    max_epochs: int = 20
    patience: int = 3
    seed: int = 0
    threads: int = 1
    task_weights: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"rank.train.lr: must be a positive finite number, got {self.lr}")
        if not self.weight_decay >= 0:
            raise ConfigError(f"rank.train.weight_decay: must be >= 0, got {self.weight_decay}")
        for name in ("batch_size", "max_epochs", "patience", "threads"):
            if getattr(self, name) < 1:
                raise ConfigError(f"rank.train.{name}: must be >= 1, got {getattr(self, name)}")
        if any(not (w >= 0 and math.isfinite(w)) for w in self.task_weights):
            raise ConfigError(f"rank.train.task_weights: must be finite and >= 0, got {self.task_weights}")
        object.__setattr__(self, "task_weights", tuple(float(w) for w in self.task_weights))


class Examples(str, enum.Enum):
    """Which (user, item) rows of the window the heavy ranker learns from (see the module docstring)."""

    AUTO = "auto"  # impressions on a dataset with impressions, else funnel
    IMPRESSIONS = "impressions"  # the logged impressions of the window (shown items, logged labels)
    FUNNEL = "funnel"  # the pre-ranked candidates, labelled by the window's engagements
    BOTH = "both"  # funnel candidates plus the impressions not among them

    def resolve(self, has_impressions: bool) -> "Examples":
        if self is Examples.AUTO:
            return Examples.IMPRESSIONS if has_impressions else Examples.FUNNEL
        if self in (Examples.IMPRESSIONS, Examples.BOTH) and not has_impressions:
            raise ValueError(f"rank.examples: {self.value!r} needs a dataset with impressions (dataset.yaml "
                             "has_impressions: true); use 'funnel' or 'auto'")
        return self


@dataclasses.dataclass(frozen=True)
class RankConfig:
    """The heavy ranker (``rank`` section of the engine config).

    arch               multi-task core: mmoe | shared_bottom | single_task (:data:`recsys.rank.mmoe.ARCHITECTURES`)
    tasks              label columns to predict (binary labels); empty: every binary label in schema order
    esmm               model a task that is positive only where another is as ESMM child of it
    n_experts          MMoE experts (ignored by shared_bottom / single_task)
    expert_dims        hidden sizes of an expert (= the shared bottom; the single-task trunk)
    tower_dims         hidden sizes of each task tower
    emb_dim            embedding dim of every categorical field, the item and the history
    history_len        last engaged items pooled by target attention (0: no history input)
    dropout            dropout of the MLPs
    user_id            embed the catalogue user index (off by default: the ranker learns from one short window,
                       where a user has a handful of rows and a per-user embedding overfits; the history,
                       the users-table columns and the user features represent the user instead)
    user_dropout       with user_id: probability that a training row's user is replaced by the OOV row (which
                       serves unknown users and users without training rows), so that row learns the average user
    features           feature names (:mod:`recsys.features`); empty: all available but SOURCE_DEPENDENT
    dense_log          dense features enter as ``sign(x) log(1 + |x|)`` before standardisation: counts, PPR mass,
                       ages and co-engagement are heavy-tailed, and a z-score alone squeezes most rows into a
                       sliver near the mean while the tail is clipped at 5 (monotone: ranks within a feature
                       are unchanged)
    downsample_w       keep rate w in (0, 1] of rows whose labels are all 0 (1: no downsampling)
    examples           which (user, item) rows to learn from (:class:`Examples`): auto | impressions | funnel | both
    exposure           also learn P(shown | funnel candidate), the logging policy's exposure, as an extra head
                       (output ``p_exposure``; needs impressions; the rows become ``both``; the tasks stay
                       conditional on being shown; see :mod:`recsys.rank.stage` and ``value.exposure_power``)
    max_train_users    0: every user of the window; else a seeded sample of that many
    valid_fraction     seeded fraction of the users held out for early stopping, in [0, 1)
    calibrate_intercepts  after training, shift each head's logit so that its served (recalibrated) probability
                       matches the label rate on all the held-out users' rows (not downsampled;
                       :func:`recsys.rank.stage.level_offsets`; rankings are unchanged)
    train              optimisation (:class:`recsys.rank.trainer.TrainConfig`)
    value              the value model (:class:`recsys.rank.value.ValueConfig`)
    seed               user sampling, holdout, downsampling and initial weights
    graph              the item graph of the features (as the pre-ranker's; equal settings share one context)
    feature_params     the features' own parameters (PPR, co-engagement, CTR smoothing, item columns)
    """

    arch: str = "mmoe"
    tasks: tuple[str, ...] = ()
    esmm: bool = True
    n_experts: int = 4
    expert_dims: tuple[int, ...] = (64,)
    tower_dims: tuple[int, ...] = (32,)
    emb_dim: int = 16
    history_len: int = 20
    dropout: float = 0.0
    user_id: bool = False
    user_dropout: float = 0.1
    features: tuple[str, ...] = ()
    dense_log: bool = True
    downsample_w: float = 1.0
    examples: Examples = Examples.AUTO
    exposure: bool = False
    max_train_users: int = 0
    valid_fraction: float = 0.2
    calibrate_intercepts: bool = True
    train: TrainConfig = dataclasses.field(default_factory=TrainConfig)
    value: ValueConfig = dataclasses.field(default_factory=ValueConfig)
    seed: int = 0
    graph: GraphConfig = dataclasses.field(default_factory=GraphConfig)
    feature_params: FeatureConfig = dataclasses.field(default_factory=FeatureConfig)

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURE_NAMES:
            raise ConfigError(f"rank.arch: unknown architecture {self.arch!r}; expected one of {sorted(ARCHITECTURE_NAMES)}")
        w = self.downsample_w
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not 0.0 < w <= 1.0:
            raise ConfigError(f"rank.downsample_w: the negative keep rate w must be in (0, 1] (1 disables "
                              f"downsampling), got {w!r}")
        for name, ok, what in (
            ("n_experts", self.n_experts >= 1, ">= 1"),
            ("expert_dims", len(self.expert_dims) >= 1 and all(d >= 1 for d in self.expert_dims),
             "a non-empty list of sizes >= 1"),
            ("tower_dims", all(d >= 1 for d in self.tower_dims), "a list of sizes >= 1"),
            ("emb_dim", self.emb_dim >= 1, ">= 1"),
            ("history_len", self.history_len >= 0, ">= 0"),
            ("dropout", 0.0 <= self.dropout < 1.0, "in [0, 1)"),
            ("user_dropout", 0.0 <= self.user_dropout <= 1.0, "in [0, 1]"),
            ("max_train_users", self.max_train_users >= 0, ">= 0"),
            ("valid_fraction", 0.0 <= self.valid_fraction < 1.0, "in [0, 1)"),
        ):
            if not ok:
                raise ConfigError(f"rank.{name}: must be {what}, got {getattr(self, name)!r}")
        for name in ("tasks", "features"):
            vals = getattr(self, name)
            if len(set(vals)) != len(vals):
                raise ConfigError(f"rank.{name}: duplicate names in {list(vals)}")
        for reserved in (ANY_TASK, EXPOSURE):
            if reserved in self.tasks:
                raise ConfigError(f"rank.tasks: {reserved!r} is reserved")
        if self.exposure and self.examples not in (Examples.AUTO, Examples.BOTH):
            raise ConfigError(f"rank.exposure: the exposure head learns from the funnel candidates and the "
                              f"impressions together (rank.examples 'both' or 'auto'), got {self.examples.value!r}")
        object.__setattr__(self, "downsample_w", float(w))


# ------------------------------------------------------------------------------------------------------------
# Tasks
# ------------------------------------------------------------------------------------------------------------
