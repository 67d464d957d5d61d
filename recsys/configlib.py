"""Typed configuration machinery: YAML -> frozen dataclasses, and the engine-wide config sections.

Stage modules import from here (never from :mod:`recsys.config`, which aggregates the stage sections and so
imports the stages). 

Every section of the engine's configuration is a frozen dataclass. :func:`from_dict` builds one from plain
YAML data and rejects unknown keys and wrong types with a message naming the dotted key and the allowed
values, so a typo never passes silently. Closed choices are Enums. ``--set a.b=value`` overrides are applied
to the raw mapping before type checking, so they are checked exactly like the file.

No config constructor has side effects (no environment variables, no threads, no Ray init).
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from pathlib import Path
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A configuration value or key is invalid. The message names the dotted key."""


# --------------------------------------------------------------------------------------------------------
# Sections
# --------------------------------------------------------------------------------------------------------


class SplitMethod(str, enum.Enum):
    AUTO = "auto"  # temporal when the dataset has timestamps, else random_holdout (the default)
    TEMPORAL = "temporal"  # global cut-offs in time shared by all users (leak-free)
    LEAVE_LAST_N = "leave_last_n"  # per user: the last n events go to the last window, and so on backwards
    RANDOM_HOLDOUT = "random_holdout"  # per user: events drawn at random into the windows by their fractions

    def resolve(self, has_timestamps: bool) -> "SplitMethod":
        """The concrete method: ``auto`` is ``temporal`` on a dataset with timestamps, else ``random_holdout``."""
        if self is SplitMethod.AUTO:
            return SplitMethod.TEMPORAL if has_timestamps else SplitMethod.RANDOM_HOLDOUT
        return self


#: split methods that read the timestamps as time (refused on an untimed log)
TEMPORAL_METHODS = (SplitMethod.TEMPORAL, SplitMethod.LEAVE_LAST_N)


class SplitBasis(str, enum.Enum):
    SPAN = "span"  # fractions of the time span [t_min, t_max]
    EVENTS = "events"  # fractions of the events: cut-offs at time quantiles


@dataclasses.dataclass(frozen=True)
class SplitConfig:
    """How interactions are cut into time windows.

    ``windows`` maps window names, in time order, to fractions that sum to 1: of the time span
    (``basis: span``) or of the events (``basis: events``: cut-offs at time quantiles, for logs whose
    activity is uneven over the years, like MovieLens).
    The default gives every stage a window its upstream stage did not train on:
    ``train`` (retrieval) -> ``prerank`` (pre-ranker) -> ``rank`` (heavy ranker) -> ``test``.
    ``cutoffs`` (optional, temporal only) gives explicit timestamps instead of fractions: len(windows) - 1
    increasing Unix seconds. ``leave_last_n`` puts each user's last ``n`` events in the last window, the ``n``
    before in the one before, and the rest in the first window; a user's events that share a timestamp are
    ordered by a hash of (user, item) keyed by ``tie_seed`` (never by file order or item id), so a tie group
    that straddles a window boundary is cut at random but reproducibly. ``random_holdout`` draws each
    user's events at random (``seed``) into the windows so that each window holds its fraction of every
    user's events (the protocol for logs without timestamps; not leak-free). ``auto`` (default) is
    ``temporal`` on a dataset with timestamps and ``random_holdout`` on an untimed one. ``folds: K`` (>= 2,
    ``random_holdout`` only) makes it K-fold: the last (test) window is fold ``fold`` (0 .. K-1) of a seeded
    per-user partition of each user's events into K equal parts (its configured fraction is replaced by 1/K),
    and the other windows share the remaining events by their fractions; the K runs with ``fold = 0 .. K-1``
    (same ``seed``) test on disjoint windows that together cover every event. ``kcore`` > 0 keeps
    only users and items with at least that many interactions (iterated to a fixed point) before splitting.

    ``validation: true`` is the validation protocol: the interactions before the test window are split again
    the same way, so the last window of that split (the one just before the test window) plays the test
    window for training and evaluation. Every choice (configs, stages, features, tuning) is made with it on;
    the test window is touched only by a final run with it off.
    """

    method: SplitMethod = SplitMethod.AUTO
    basis: SplitBasis = SplitBasis.SPAN
    windows: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"train": 0.70, "prerank": 0.10, "rank": 0.10, "test": 0.10}
    )
    cutoffs: tuple[int, ...] = ()
    n: int = 1
    kcore: int = 0
    validation: bool = False
    tie_seed: int = 0
    seed: int = 0
    folds: int = 0
    fold: int = 0

    def __post_init__(self) -> None:
        if self.folds < 0 or self.folds == 1:
            raise ConfigError(f"split.folds: 0 (no k-fold) or >= 2, got {self.folds}")
        if self.folds and self.method not in (SplitMethod.RANDOM_HOLDOUT, SplitMethod.AUTO):
            raise ConfigError(f"split.folds: k-fold is a random_holdout protocol, not {self.method.value!r} "
                              "(--set split.method=random_holdout)")
        if self.folds and not 0 <= self.fold < self.folds:
            raise ConfigError(f"split.fold: must be in 0 .. split.folds - 1 = {self.folds - 1}, got {self.fold}")
        if self.fold and not self.folds:
            raise ConfigError(f"split.fold: {self.fold} needs split.folds >= 2 (k-fold)")
        if self.validation and self.cutoffs:
            raise ConfigError("split.validation: not available with explicit split.cutoffs; give the validation "
                              "windows' cut-offs instead")
        if len(self.windows) < 2:
            raise ConfigError(f"split.windows: need at least 2 windows, got {list(self.windows)}")
        if any(not (0.0 < f < 1.0) for f in self.windows.values()):
            raise ConfigError(f"split.windows: each fraction must be in (0, 1), got {self.windows}")
        if self.method is not SplitMethod.LEAVE_LAST_N and not self.cutoffs:
            total = sum(self.windows.values())
            if abs(total - 1.0) > 1e-6:
                raise ConfigError(f"split.windows: fractions must sum to 1, got {total:.6f} ({self.windows})")
        if self.cutoffs:
            if self.method not in (SplitMethod.TEMPORAL, SplitMethod.AUTO):
                raise ConfigError("split.cutoffs: only valid with split.method = temporal")
            if len(self.cutoffs) != len(self.windows) - 1:
                raise ConfigError(
                    f"split.cutoffs: need len(windows) - 1 = {len(self.windows) - 1} timestamps, "
                    f"got {len(self.cutoffs)}"
                )
            if any(b <= a for a, b in zip(self.cutoffs, self.cutoffs[1:])):  # equal cut-offs: an empty window
                raise ConfigError(f"split.cutoffs: must be strictly increasing, got {self.cutoffs}")
        if self.n < 1:
            raise ConfigError(f"split.n: must be >= 1, got {self.n}")
        if self.kcore < 0:
            raise ConfigError(f"split.kcore: must be >= 0, got {self.kcore}")


class Backend(str, enum.Enum):
    LOCAL = "local"
    RAY = "ray"


@dataclasses.dataclass(frozen=True)
class RayConfig:
    """Where Ray runs. ``address`` None starts a local Ray with ``num_cpus``; otherwise connect to it."""

    address: str | None = None
    num_cpus: int = 2


class CountScale(str, enum.Enum):
    """How a baseline that regresses on a graded label reads a *count* label (plays, views: kind ``count``)."""

    LOG = "log"  # rating = log(1 + count): a count of 352,698 plays is 12.8, not a rating of 352,698
    BINARY = "binary"  # every engaged item is 1, plus as many sampled non-engaged items at 0


def _check(section: str, checks) -> None:
    """Raise ConfigError for the first ``(field, ok, what, value)`` of ``checks`` that is not ok."""
    for name, ok, what, value in checks:
        if not ok:
            raise ConfigError(f"{section}.{name}: must be {what}, got {value!r}")


@dataclasses.dataclass(frozen=True)
class PopularityParams:
    """``popularity``: ``half_life_days`` > 0 weighs a positive by ``0.5 ** (age / half_life)``; null: counts."""

    half_life_days: float | None = None

    def __post_init__(self) -> None:
        h = self.half_life_days
        _check("eval.baseline_params.popularity", [("half_life_days", h is None or h > 0, "> 0 or null", h)])


@dataclasses.dataclass(frozen=True)
class ItemKNNParams:
    """``itemknn``: ``n_neighbors`` most similar items kept per item (cosine)."""

    n_neighbors: int = 100

    def __post_init__(self) -> None:
        _check("eval.baseline_params.itemknn", [("n_neighbors", self.n_neighbors >= 1, ">= 1", self.n_neighbors)])


@dataclasses.dataclass(frozen=True)
class SVDParams:
    """``svd`` (scikit-surprise's biased MF): factors, SGD epochs, learning rate, L2; ``use_impressions``: regress
    on shown-not-engaged rows as 0; ``counts``: how a count label becomes a rating (:class:`CountScale`)."""

    n_factors: int = 100
    n_epochs: int = 20
    lr_all: float = 0.005
    reg_all: float = 0.02
    use_impressions: bool = False
    counts: CountScale = CountScale.LOG

    def __post_init__(self) -> None:
        _check("eval.baseline_params.svd", [
            ("n_factors", self.n_factors >= 1, ">= 1", self.n_factors),
            ("n_epochs", self.n_epochs >= 1, ">= 1", self.n_epochs),
            ("lr_all", self.lr_all > 0, "> 0", self.lr_all),
            ("reg_all", self.reg_all >= 0, ">= 0", self.reg_all),
        ])


@dataclasses.dataclass(frozen=True)
class EASEParams:
    """``ease``: ``l2`` the ridge penalty; ``max_items`` the most popular items modelled (a dense
    max_items x max_items float64 matrix: 3.2 GB at 20,000); ``blas_threads`` BLAS threads of the Gram
    inversion (1: multi-threaded OpenBLAS crashed on a 17,632-item inversion)."""

    l2: float = 500.0
    max_items: int = 20000
    blas_threads: int = 1

    def __post_init__(self) -> None:
        _check("eval.baseline_params.ease", [
            ("l2", self.l2 > 0, "> 0", self.l2),
            ("max_items", self.max_items >= 1, ">= 1", self.max_items),
            ("blas_threads", self.blas_threads >= 1, ">= 1", self.blas_threads),
        ])


@dataclasses.dataclass(frozen=True)
class ALSParams:
    """``als`` (implicit's ALS): latent ``factors``, L2 ``regularization``, confidence ``alpha`` of a positive,
    ``iterations`` alternating sweeps."""

    factors: int = 64
    regularization: float = 0.05
    alpha: float = 10.0
    iterations: int = 15

    def __post_init__(self) -> None:
        _check("eval.baseline_params.als", [
            ("factors", self.factors >= 1, ">= 1", self.factors),
            ("regularization", self.regularization > 0, "> 0", self.regularization),
            ("alpha", self.alpha > 0, "> 0", self.alpha),
            ("iterations", self.iterations >= 1, ">= 1", self.iterations),
        ])


@dataclasses.dataclass(frozen=True)
class BPRParams:
    """``bpr`` (implicit's BPR): latent ``factors``, SGD ``learning_rate``, L2 ``regularization``, ``iterations``
    epochs."""

    factors: int = 64
    learning_rate: float = 0.01
    regularization: float = 0.01
    iterations: int = 100

    def __post_init__(self) -> None:
        _check("eval.baseline_params.bpr", [
            ("factors", self.factors >= 1, ">= 1", self.factors),
            ("learning_rate", self.learning_rate > 0, "> 0", self.learning_rate),
            ("regularization", self.regularization > 0, "> 0", self.regularization),
            ("iterations", self.iterations >= 1, ">= 1", self.iterations),
        ])


@dataclasses.dataclass(frozen=True)
class BaselineParams:
    """Each baseline's settings (``eval.baseline_params``), tunable like the engine's: e.g.
    ``--set eval.baseline_params.ease.l2=200`` or ``--set eval.baseline_params.itemknn.n_neighbors=50``.
    ``random`` has none (its seed is the config's ``seed``)."""

    popularity: PopularityParams = dataclasses.field(default_factory=PopularityParams)
    itemknn: ItemKNNParams = dataclasses.field(default_factory=ItemKNNParams)
    svd: SVDParams = dataclasses.field(default_factory=SVDParams)
    ease: EASEParams = dataclasses.field(default_factory=EASEParams)
    als: ALSParams = dataclasses.field(default_factory=ALSParams)
    bpr: BPRParams = dataclasses.field(default_factory=BPRParams)

    def of(self, name: str) -> dict[str, Any]:
        """The keyword parameters of baseline ``name`` (``{}`` for one without settings)."""
        section = getattr(self, name, None) if name in {f.name for f in dataclasses.fields(self)} else None
        return {} if section is None else {f.name: getattr(section, f.name) for f in dataclasses.fields(section)}


@dataclasses.dataclass(frozen=True)
class EvalConfig:
    """Offline evaluation.

    ``positive_label`` defines an engagement (relevant item) in the test window; ``gains`` gives the graded
    relevance of an engaged item as sum(weight * label). ``exclude_seen`` removes items the user engaged with
    before the test window from the ranking (and therefore from the test relevance). ``baselines`` names the
    baselines evaluated beside the engine and ``baseline_params`` their settings (:class:`BaselineParams`).
    """

    ks: tuple[int, ...] = (1, 5, 10, 20, 50, 100)
    metrics: tuple[str, ...] = ("ndcg", "mrr", "map", "recall", "precision", "hit")
    positive_label: str | None = None  # None: the dataset's declared positive label
    gains: dict[str, float] = dataclasses.field(default_factory=dict)  # {} : binary gain of positive_label
    exclude_seen: bool = True
    head_fraction: float = 0.2  # items making up this fraction of train engagements form the "head"
    bootstrap_samples: int = 1000
    max_users: int = 0  # 0: all test users; otherwise a seeded sample (for quick runs)
    backend: Backend = Backend.LOCAL
    shards: int = 8
    baselines: tuple[str, ...] = ("random", "popularity", "itemknn", "svd", "ease")
    baseline_params: BaselineParams = dataclasses.field(default_factory=BaselineParams)
    seed: int = 0


_FUNNEL_SIZES = ("the stages train on exactly the candidates the funnel serves them, so their sizes come from "
                 "engine.funnel (e.g. [{stage: retrieval, k: 1000}, {stage: prerank, k: 100}, {stage: rank, k: 10}])")
_SYSTEMS = ("say which ablation systems to train with the top-level key systems: [...] "
            "(recsys.systems; empty: all)")
REMOVED_KEYS = {
    "engine.retrieve_k": _FUNNEL_SIZES, "engine.prerank_k": _FUNNEL_SIZES, "engine.k": _FUNNEL_SIZES,
    "prerank.candidates_k": _FUNNEL_SIZES, "rank.candidates_k": _FUNNEL_SIZES, "rank.retrieve_k": _FUNNEL_SIZES,
    "prerank.enabled": "a stage is enabled by being in engine.funnel",
    "rank.enabled": "a stage is enabled by being in engine.funnel",
    "prerank.ablate_graph": _SYSTEMS, "rank.ablate_arch": _SYSTEMS, "rank.ablate_upstream": _SYSTEMS,
}
@dataclasses.dataclass(frozen=True)
class FunnelStage:
    """One entry of ``engine.funnel``: the stage's name, its cut-off ``k``, its registry type (default: the
    name) and, for a scoring stage, the split windows it learns from (``windows``; default: the one window of
    its name). Several windows are several as-of cut points: the stage's rows are built at the start of each,
    with point-in-time features and an upstream as of that cut (``recsys.training``)."""

    stage: str
    k: int
    type: str | None = None
    windows: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(set(self.windows)) != len(self.windows):
            raise ConfigError(f"engine.funnel ({self.stage}).windows: duplicate window names in {list(self.windows)}")

    @property
    def type_name(self) -> str:
        return self.type or self.stage


DEFAULT_FUNNEL = (FunnelStage("retrieval", 1000), FunnelStage("prerank", 100), FunnelStage("rank", 10))


@dataclasses.dataclass(frozen=True)
class EngineConfig:
    """The funnel: the stages in order, each with its cut-off, e.g.
    ``[{stage: retrieval, k: 1000}, {stage: prerank, k: 100}, {stage: rank, k: 10}]``.

    The first stage is the candidate stage (it retrieves ``k`` candidates); each later stage scores what the
    stage before it kept and keeps its own ``k``; the last ``k`` is the number of items shown. A stage's
    ``type`` (its entry in :data:`recsys.stages.base.STAGES`) defaults to its name. Every stage is trained on
    exactly the candidates this funnel hands it (``recsys.training``).
    """

    funnel: tuple[FunnelStage, ...] = DEFAULT_FUNNEL
    exclude_seen: bool = True

    def __post_init__(self) -> None:
        from recsys.stages.base import STAGES

        if not self.funnel:
            raise ConfigError("engine.funnel: need at least the candidate stage, e.g. [{stage: retrieval, k: 1000}]")
        names = [f.stage for f in self.funnel]
        if len(set(names)) != len(names):
            raise ConfigError(f"engine.funnel: stage names must be unique, got {names}")
        for i, f in enumerate(self.funnel):
            t = f.type_name
            if t not in STAGES:
                raise ConfigError(f"engine.funnel[{i}] ({f.stage}): unknown stage type {t!r}; registered: "
                                  f"{sorted(STAGES)}")
            if STAGES[t].candidate != (i == 0):
                what = "the first stage must be a candidate stage" if i == 0 else "only the first stage retrieves"
                raise ConfigError(f"engine.funnel[{i}] ({f.stage}): {what} (type {t!r}); funnel: {self.sizes}")
        if self.funnel[0].windows:
            raise ConfigError(f"engine.funnel[0] ({self.funnel[0].stage}).windows: the candidate stage trains on the "
                              "split's first window (early stopping on the second); windows are for scoring stages")
        ks = [f.k for f in self.funnel]
        if any(k < 1 for k in ks) or any(a < b for a, b in zip(ks, ks[1:])):
            raise ConfigError(f"engine.funnel: cut-offs must be >= 1 and non-increasing, got {self.sizes}")

    @property
    def sizes(self) -> dict[str, int]:
        """``{stage name: cut-off}`` in funnel order."""
        return {f.stage: f.k for f in self.funnel}

    def type_of(self, name: str) -> str:
        return next(f.type_name for f in self.funnel if f.stage == name)

    @property
    def stages(self) -> list[tuple[str, str, int]]:
        """``[(name, type, cut-off)]`` in funnel order."""
        return [(f.stage, f.type_name, f.k) for f in self.funnel]

    @property
    def retrieve_k(self) -> int:
        return self.funnel[0].k

    @property
    def k(self) -> int:
        """The number of items shown: the last stage's cut-off."""
        return self.funnel[-1].k

    def cutoff(self, name: str) -> int | None:
        return self.sizes.get(name)


# --------------------------------------------------------------------------------------------------------
# Generic loader
# --------------------------------------------------------------------------------------------------------


def _type_name(tp: Any) -> str:
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        return "one of " + ", ".join(repr(m.value) for m in tp)
    if dataclasses.is_dataclass(tp):
        return f"a mapping ({tp.__name__})"
    return getattr(tp, "__name__", None) or str(tp).replace("typing.", "")


def _convert(value: Any, tp: Any, key: str) -> Any:
    """Check and convert a raw YAML ``value`` to type ``tp``; errors name ``key``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(value, arg, key)
            except ConfigError as exc:
                errors.append(str(exc))
        allowed = " or ".join(_type_name(a) for a in args)
        raise ConfigError(f"{key}: expected {allowed}, got {value!r}")
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping of {tp.__name__} fields, got {value!r}")
        return from_dict(tp, value, prefix=key)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        for member in tp:
            if value == member.value or value == member.name or value is member:
                return member
        raise ConfigError(f"{key}: {value!r} is not allowed; expected {_type_name(tp)}")
    if origin is tuple:
        if isinstance(value, (str, bytes)) or not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_convert(v, args[0], f"{key}[{i}]") for i, v in enumerate(value))
        if len(args) != len(value):
            raise ConfigError(f"{key}: expected a list of {len(args)} values, got {value!r}")
        return tuple(_convert(v, a, f"{key}[{i}]") for i, (v, a) in enumerate(zip(value, args)))
    if origin in (dict, Mapping) or tp is dict:
        if not isinstance(value, Mapping):
            raise ConfigError(f"{key}: expected a mapping, got {value!r}")
        kt, vt = args if args else (Any, Any)
        return {_convert(k, kt, f"{key}"): _convert(v, vt, f"{key}.{k}") for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        raise ConfigError(f"{key}: expected a number, got {value!r}")
    if tp is str:
        if isinstance(value, str):
            return value
        raise ConfigError(f"{key}: expected a string, got {value!r}")
    raise ConfigError(f"{key}: unsupported config type {tp!r}")  # internal: a field type we cannot check


def _qualified(message: str, prefix: str) -> str:
    """A nested section's check names its key from the section (``collab.l2: ...``): give it the whole path
    (``prerank.feature_params.collab.l2: ...``) when the section sits at ``prefix``."""
    key = message.split(":", 1)[0]
    if not prefix or " " in key or key == prefix or key.startswith(prefix + "."):
        return message
    last = prefix.rsplit(".", 1)[-1]
    if key == last or key.startswith(last + "."):
        return prefix + message[len(last):]
    return message


def from_dict(cls: type[T], data: Mapping[str, Any] | None, prefix: str = "") -> T:
    """Build dataclass ``cls`` from ``data``; unknown keys and wrong types raise :class:`ConfigError`."""
    data = dict(data or {})
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    for k in unknown:
        dotted = f"{prefix}.{k}" if prefix else k
        if dotted in REMOVED_KEYS:
            raise ConfigError(f"{dotted}: this key was removed; {REMOVED_KEYS[dotted]}")
    if unknown:
        where = prefix or cls.__name__
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(repr(f'{prefix}.{k}' if prefix else k) for k in unknown)}; "
            f"allowed keys: {', '.join(sorted(fields))}"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _convert(value, hints[name], key)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(_qualified(str(exc), prefix)) from exc.__cause__
    except (TypeError, ValueError) as exc:  # a __post_init__ check
        raise ConfigError(f"{prefix or cls.__name__}: {exc}") from exc


def to_dict(obj: Any) -> Any:
    """A dataclass (nested) as plain YAML/JSON data; Enums become their values."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: to_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, enum.Enum):
        return obj.value
    if isinstance(obj, (list, tuple)):
        return [to_dict(v) for v in obj]
    if isinstance(obj, dict):
        return {k: to_dict(v) for k, v in obj.items()}
    return obj


class _UniqueKeyLoader(yaml.SafeLoader):
    """A safe YAML loader that refuses duplicate keys in a mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode, deep: bool = False) -> dict:
    seen: dict[Any, Any] = {}
    for key_node, _ in node.value:
        key = loader.construct_object(key_node, deep=deep)
        if key in seen:
            raise ConfigError(
                f"duplicate key {key!r} at line {key_node.start_mark.line + 1} "
                f"(first at line {seen[key] + 1}) in {node.start_mark.name}"
            )
        seen[key] = key_node.start_mark.line
    return loader.construct_mapping(node, deep=deep)


_UniqueKeyLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _construct_mapping)


def load_yaml(path: str | Path) -> Any:
    """Read a YAML file with the safe loader, refusing duplicate keys; errors name the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: file not found") from None
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...]) -> dict[str, Any]:
    """Apply ``a.b=value`` overrides (value parsed as YAML) to a raw mapping, returning a new mapping."""
    out = _deepcopy(data)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected KEY=VALUE with a dotted key, e.g. engine.k=20")
        key, raw = item.split("=", 1)
        parts = [p for p in key.strip().split(".") if p]
        if not parts:
            raise ConfigError(f"--set {item!r}: empty key")
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {exc}") from None
        node = out
        for p in parts[:-1]:
            nxt = node.get(p)
            if nxt is None:
                nxt = node[p] = {}
            elif not isinstance(nxt, dict):
                raise ConfigError(f"--set {item!r}: {p!r} is not a section")
            node = nxt
        node[parts[-1]] = value
    return out


def _deepcopy(d: Any) -> Any:
    if isinstance(d, dict):
        return {k: _deepcopy(v) for k, v in d.items()}
    if isinstance(d, list):
        return [_deepcopy(v) for v in d]
    return d
