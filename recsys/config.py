"""The engine configuration: the YAML file's sections as one frozen dataclass.

The loader and the engine-wide sections live in :mod:`recsys.configlib` (re-exported here); each stage's
section lives beside its stage. Load with :func:`load_config`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from recsys.configlib import (  # noqa: F401  (re-exported)
    Backend,
    BaselineParams,
    ConfigError,
    CountScale,
    EngineConfig,
    EvalConfig,
    FunnelStage,
    RayConfig,
    SplitBasis,
    SplitConfig,
    SplitMethod,
    apply_overrides,
    from_dict,
    load_yaml,
    to_dict,
)
from recsys.prerank.stage import PrerankConfig  # noqa: E402
from recsys.rank.config import RankConfig  # noqa: E402
from recsys.retrieval.config import RetrievalConfig  # noqa: E402
from serving.config import ServingConfig  # noqa: E402


@dataclasses.dataclass(frozen=True)
class Config:
    """The whole engine configuration (``configs/default.yaml``).

    ``seed`` is the run's seed: every stage's own ``seed`` key is offset by it (:func:`recsys.training.seeded`),
    so ``--set seed=N`` trains an independent replicate of the same config.
    """

    name: str = "default"
    seed: int = 0
    torch_threads: int = 1
    split: SplitConfig = dataclasses.field(default_factory=SplitConfig)
    retrieval: RetrievalConfig = dataclasses.field(default_factory=RetrievalConfig)
    prerank: PrerankConfig = dataclasses.field(default_factory=PrerankConfig)
    rank: RankConfig = dataclasses.field(default_factory=RankConfig)
    engine: EngineConfig = dataclasses.field(default_factory=EngineConfig)
    eval: EvalConfig = dataclasses.field(default_factory=EvalConfig)
    ray: RayConfig = dataclasses.field(default_factory=RayConfig)
    serving: ServingConfig = dataclasses.field(default_factory=ServingConfig)
    # the systems the bundle trains stages for, beside the engine (``recsys.systems``); empty: all
    systems: tuple[str, ...] = ()
    # the config of stage types registered from outside (no top-level section): {stage name: {key: value}}
    stage_params: dict[str, dict] = dataclasses.field(default_factory=dict)


def load_config(path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Load ``Config`` from a YAML file (or the defaults when ``path`` is None) plus ``--set`` overrides."""
    raw: Any = {}
    if path is not None:
        raw = load_yaml(path) or {}
        if not isinstance(raw, dict):
            raise ConfigError(f"{path}: the top level must be a mapping of sections, got {type(raw).__name__}")
    raw = apply_overrides(raw, overrides)
    try:
        return from_dict(Config, raw)
    except ConfigError as exc:
        where = f"{path}: " if path is not None else ""
        raise ConfigError(f"{where}{exc}") from None


