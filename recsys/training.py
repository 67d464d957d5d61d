"""Train the funnel's stages on their windows and write one bundle; load a bundle's systems back into Engines.

Windows (``split.windows`` in time order; see :mod:`recsys.data.split` and :mod:`recsys.windows`): the
candidate stage (retrieval) trains on the first window and early-stops on the second; each scoring stage
trains on the window of its own name (``prerank``, ``rank``; positionally when the split names its windows
otherwise), or on every window its funnel entry lists (``windows``: several as-of cut points), in funnel order;
the last window is the test window, never touched here.

**Several cut points.** At each of a stage's windows its rows are built as of that window's start: the history
before it, the feature contexts fitted on the look-back ending there, the two-tower that serves it, and each
upstream scoring stage trained on *its own windows before it* (:func:`train_engine`'s ``fit_as_of``), so no
upstream score comes from a model that saw the row's label. The shipped upstream is the one trained on all its
windows, which all precede the stage's last window.

**Cascade-consistent.** Every scoring stage learns from one :class:`~recsys.stages.base.FitContext` whose
``upstream`` is the engine that serves it in the bundle: the same retrieval model, the same scoring stages
before it, the same cut-offs (``engine.funnel``), so the candidates, their sizes, source quotas and upstream
scores of its training rows are those it is served (nothing is sized by hand). Each system of
:mod:`recsys.systems` is trained the same way on its own upstream; identical stages are trained once.

**Point-in-time features.** A stage's training rows are assembled with feature contexts fitted on the
look-back (:func:`lookback_events`) that ends where its window begins, and its upstream stages score with the
same contexts; the bundle's stages then get contexts on the same look-back ending at the test window (the
serving snapshot). With ``retrieval.refit`` (walk-forward) the two-tower is retrained on every window before
each scoring stage's window, and that refit is the stage's upstream; the bundle serves the one retrained on
every window before the test window (:func:`refit_candidates`).

**Seeds.** ``cfg.seed`` offsets every stage's own seed (:func:`seeded`): ``--set seed=N`` is a replicate.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
from pathlib import Path


from recsys.bundle import Bundle, check_name, data_fingerprint, load_bundle, write_bundle
from recsys.config import Config, ConfigError, from_dict, to_dict
from recsys.data.catalog import Catalog
from recsys.data.schema import Dataset
from recsys.data.split import Split, split_dataset
from recsys.data.vocab import Vocab
from recsys.engine import Engine
from recsys.stages.base import FitContext, stage_type
from recsys.systems import ALL_SCORING, DERIVATIONS, VARIANTS, System, applicable, selected
from recsys.windows import RETRIEVAL, stage_windows, train_windows

logger = logging.getLogger(__name__)



def seeded(cfg: Config) -> Config:
    """``cfg`` with every stage seed offset by ``cfg.seed`` (the two-tower's, the pre-ranker's, the heavy
    ranker's and its trainer's), so one top-level seed makes an independent training replicate."""
    s = cfg.seed
    if s == 0:
        return cfg
    tt = dataclasses.replace(cfg.retrieval.two_tower, seed=cfg.retrieval.two_tower.seed + s)
    rank = dataclasses.replace(cfg.rank, seed=cfg.rank.seed + s,
                               train=dataclasses.replace(cfg.rank.train, seed=cfg.rank.train.seed + s))
    return dataclasses.replace(cfg, retrieval=dataclasses.replace(cfg.retrieval, two_tower=tt),
                               prerank=dataclasses.replace(cfg.prerank, seed=cfg.prerank.seed + s), rank=rank)


def save_catalog(catalog: Catalog, folder: Path) -> None:
    catalog.users.save(folder / "users.parquet")
    catalog.items.save(folder / "items.parquet")


def load_catalog(folder: Path) -> Catalog:
    return Catalog(Vocab.load(folder / "users.parquet"), Vocab.load(folder / "items.parquet"))


def stage_config(cfg: Config, name: str, type_name: str):
    """The config of funnel stage ``name`` (of registry type ``type_name``): its type's top-level section, or
    ``stage_params.<name>`` parsed by the type's config class for types registered from outside."""
    st = stage_type(type_name)
    if st.section is not None:
        if name in cfg.stage_params:
            raise ConfigError(f"stage_params.{name}: stage type {type_name!r} is configured by the top-level "
                              f"section {st.section!r}")
        return getattr(cfg, st.section)
    cls = st.config_class()
    if cls is None:
        return dict(cfg.stage_params.get(name, {}))
    return from_dict(cls, cfg.stage_params.get(name, {}), prefix=f"stage_params.{name}")


def build_stage(name: str, type_name: str, stage_cfg):
    """An unfitted stage of registry type ``type_name`` named ``name`` (its constructor only stores the config)."""
    stage = stage_type(type_name).load_class()(stage_cfg)
    stage.name = name
    return stage


@dataclasses.dataclass(frozen=True)
class _Planned:
    """One stage of one system: what to train (or reuse) and where its upstream comes from."""

    name: str
    type: str
    k: int
    cfg: object
    key: str  # identical keys = identical stages (same config, same upstream): trained once
    upstream: str = ""  # the key of the engine that serves it (retrieval, cut-offs, the stages before it)


def plan_system(system: System, cfg: Config, base: dict[str, object]) -> list[_Planned] | None:
    """The scoring stages of ``system`` in funnel order with their cut-offs (a removed stage's cut-off passes to
    the stage before it), and the retrieval cut-off as the first entry's ``k``. None when the system would equal
    the engine (its variants change nothing). ``base``: the engine's fitted stages by name (variants read their
    feature lists)."""
    funnel = cfg.engine.stages
    drop = {t for _, t, _ in funnel[1:]} if ALL_SCORING in system.drop else set(system.drop)
    variants = dict(system.variants)
    kept: list[list] = [[funnel[0][0], funnel[0][1], funnel[0][2]]]
    dropped: list[str] = []
    for name, t, k in funnel[1:]:
        if t in drop:
            kept[-1][2] = k
            dropped.append(name)
        else:
            kept.append([name, t, k])
    changed = bool(dropped)
    out: list[_Planned] = []
    upstream_key = f"{kept[0][0]}@{kept[0][2]}"
    for name, t, k in kept[1:]:
        scfg = stage_config(cfg, name, t)
        if t in variants:
            new = VARIANTS[variants[t]](scfg, base[name])
            if new is not None:
                scfg, changed = new, True
        if dropped and getattr(scfg, "features", ()):
            scores = {f"{d}_score" for d in dropped}
            scfg = dataclasses.replace(scfg, features=tuple(f for f in scfg.features if f not in scores))
        key = f"{upstream_key}>{name}:{json.dumps(to_dict(scfg), sort_keys=True, default=str)}"
        out.append(_Planned(name, t, k, scfg, key, upstream_key))
        upstream_key = f"{key}@{k}"
    if not changed and system.name != "engine" and system.derive is None:
        return None
    return [_Planned(kept[0][0], kept[0][1], kept[0][2], None, kept[0][0])] + out


def lookback_events(split: Split, at: str, first: str, time_col: str):
    """The events a feature context sees when a stage serves the window ``at``: everything before it, within
    a look-back as long as the first (retrieval) window ``first`` (so count features keep the scale they were
    trained with)."""
    history = split.before(at)
    train, t = split[first], time_col
    lookback = int(train[t].max() - train[t].min()) + 1
    end = int(split[at][t].min()) if len(split[at]) else int(history[t].max()) + 1
    return history[history[t].to_numpy() >= end - lookback]


class ContextsAt:
    """Feature contexts fitted on one set of events (:func:`lookback_events`), one per distinct
    ``(graph, feature_params)`` of the stages that ask."""

    def __init__(self, ds: Dataset, catalog: Catalog, events) -> None:
        self.ds, self.catalog, self.events = ds, catalog, events
        self._cache: dict[str, object] = {}

    def get(self, stage_cfg):
        from recsys.features import FeatureContext

        key = repr((stage_cfg.graph, stage_cfg.feature_params))
        if key not in self._cache:
            self._cache[key] = FeatureContext.fit(self.ds, self.catalog, self.events, stage_cfg.graph,
                                                  stage_cfg.feature_params)
        return self._cache[key]

    def stage(self, stage):
        """A shallow copy of a fitted scoring stage (or None) that computes its features with these events."""
        if stage is None:
            return None
        if not uses_feature_context(stage):
            return stage
        out = copy.copy(stage)
        out.ctx = self.get(stage.cfg)
        return out


def train_engine(ds: Dataset, cfg: Config, out: str | Path) -> Bundle:
    """Fit the funnel and every selected system's stages (cascade-consistent, point-in-time; see the module
    docstring) and write the bundle under ``out`` (a new version). The manifest records the funnel and, per
    system, its stages (name, type, cut-off, folder). The config is first checked against the dataset
    (:func:`recsys.validate.check_config`), so every caller gets the one-line errors before any training."""
    from recsys.validate import check_config

    cfg = check_config(seeded(cfg), ds)
    split = split_dataset(ds, cfg.split)
    windows = stage_windows(split, cfg.engine)
    funnel = cfg.engine.stages
    types = [t for _, t, _ in funnel]
    systems = [s for s in selected(cfg.systems) if applicable(s, types)]
    cand_name, cand_type, _ = funnel[0]
    cuts = train_windows(split, cfg.engine)
    catalog = Catalog.from_dataset(ds, train=split[windows[RETRIEVAL]])
    logger.info("training the funnel %s on windows %s (catalogue: %d users, %d items); systems %s",
                cfg.engine.sizes, {**windows, **{n: w for n, w in cuts.items() if len(w) > 1}}, catalog.n_users,
                catalog.n_items, [s.name for s in systems])
    retrieval = build_stage(cand_name, cand_type, stage_config(cfg, cand_name, cand_type)).fit(FitContext(
        ds, catalog, split, windows[RETRIEVAL], split.before(windows[RETRIEVAL]),
        valid=split[windows["retrieval_valid"]], seed=cfg.seed))
    metrics: dict = {cand_name: {"epochs": retrieval.history}}
    contexts: dict[str, ContextsAt] = {}
    as_of: dict[str, tuple[Catalog, object]] = {}  # window -> (catalogue, two-tower) that serve it

    def served(w: str) -> tuple[Catalog, object]:
        """The catalogue and candidate stage that serve window ``w``: the first two-tower, or with
        ``retrieval.refit`` one retrained on every window before it (walk-forward)."""
        if not cfg.retrieval.refit or split.names.index(w) <= 1:
            return catalog, retrieval
        if w not in as_of:
            as_of[w] = refit_candidates(ds, cfg, split, w, retrieval)
        return as_of[w]

    def at(w: str) -> ContextsAt:
        if w not in contexts:
            contexts[w] = ContextsAt(ds, served(w)[0], lookback_events(split, w, windows[RETRIEVAL],
                                                                        catalog.time_col))
        return contexts[w]

    fitted: dict[tuple, object] = {}  # (plan key, windows) -> fitted stage
    upstreams: dict[tuple, Engine] = {}

    def fit_as_of(plan: list[_Planned], i: int, before: str | None, system: str):
        """Stage ``plan[i]`` trained on its windows before ``before`` (None: all of them, the shipped stage),
        each cut point served by the upstream as of that window (retrieval served there, and every stage
        before it trained on its own windows before it). Identical (stage, windows) are trained once."""
        p = plan[i]
        ws = [w for w in cuts[p.name] if before is None or split.names.index(w) < split.names.index(before)]
        key = (p.key, tuple(ws))
        if key in fitted:
            return fitted[key]
        ctxs = []
        for w in ws:
            ctx_w, (cat_w, retrieval_w) = at(w), served(w)
            ups = [(fit_as_of(plan, j, w, system), plan[j].k) for j in range(1, i)]
            up_key = (w, p.upstream, tuple(id(s) for s, _ in ups))  # this window, this upstream
            if up_key not in upstreams:  # stages with one upstream on one window share its candidates
                upstreams[up_key] = Engine(retrieval_w, [(ctx_w.stage(s), k) for s, k in ups], plan[0].k,
                                           name=f"{system}<{p.name}@{w}", catalog=cat_w, memo={})
            ctxs.append(FitContext(ds, cat_w, split, w, split.before(w), upstream=upstreams[up_key],
                                   features=ctx_w.get, seed=cfg.seed, k=p.k))
        logger.info("system %s: training stage %s (%s) on window(s) %s, upstream %s%s", system, p.name, p.type,
                    ws, [plan[0].k] + [q.k for q in plan[1:i]], "" if before is None else f" (as of {before!r})")
        stage = build_stage(p.name, p.type, p.cfg).fit(dataclasses.replace(ctxs[-1], earlier=tuple(ctxs[:-1])))
        fitted[key] = stage
        return stage

    trained: dict[str, tuple[str, object]] = {}  # plan key -> (folder, shipped stage)
    base: dict[str, object] = {}
    layout: dict[str, dict] = {}
    for system in systems:
        plan = plan_system(system, cfg, base)
        if plan is None:
            logger.info("system %s equals the engine here; not built", system.name)
            continue
        entries = [{"name": cand_name, "type": cand_type, "k": plan[0].k, "folder": cand_name}]
        stages: list[tuple[object, int]] = []
        for i, p in enumerate(plan[1:], start=1):
            if p.key not in trained:
                folder = p.name if system.name == "engine" else f"{p.name}@{system.name}"
                stage = fit_as_of(plan, i, None, system.name)
                trained[p.key] = (folder, stage)
                metrics[folder] = getattr(stage, "valid_metrics", {})
            folder, stage = trained[p.key]
            stages.append((stage, p.k))
            entries.append({"name": p.name, "type": p.type, "k": p.k, "folder": folder})
            if system.name == "engine":
                base[p.name] = stage
        if system.derive is not None:
            engine = Engine(retrieval, stages, plan[0].k, catalog=catalog)
            if DERIVATIONS[system.derive](engine) is None:
                logger.info("system %s equals the engine here; not built", system.name)
                continue
        layout[system.name] = {"stages": entries, **({"derive": system.derive} if system.derive else {})}
    upstreams.clear()  # the memos hold every training window's candidates
    as_of.clear()
    fitted.clear()
    scoring = {folder: stage for folder, stage in trained.values()}
    catalog, retrieval = refresh_snapshot(ds, cfg, split, windows, catalog, retrieval, scoring)
    if cfg.retrieval.refit:
        metrics[cand_name]["refit"] = {"users": catalog.n_users, "epochs": len(retrieval.history),
                                       "windows": split.names[:split.names.index(windows["test"])]}
    writers = {"catalog": lambda d: save_catalog(catalog, d), cand_name: retrieval.save}
    writers.update({folder: stage.save for folder, stage in scoring.items()})
    data = data_fingerprint(ds.path) if ds.path is not None else {"sha256": None}
    data["windows"] = windows
    data["split"] = split.stats()
    return write_bundle(out, writers, config=to_dict(cfg), data=data, metrics=metrics,
                        extra={"funnel": layout["engine"]["stages"], "systems": layout})


def refresh_snapshot(ds: Dataset, cfg: Config, split: Split, windows: dict, catalog: Catalog, retrieval,
                     scoring: dict):
    """The serving snapshot at the start of the test window: every scoring stage's feature context refitted on
    the look-back ending there (point-in-time, as during training) and, with ``retrieval.refit``, the two-tower
    retrained on every window before the test window (:func:`refit_candidates`). Returns the serving
    (catalog, retrieval stage)."""
    if cfg.retrieval.refit:
        catalog, retrieval = refit_candidates(ds, cfg, split, windows["test"], retrieval)
    at_test = ContextsAt(ds, catalog, lookback_events(split, windows["test"], windows[RETRIEVAL], catalog.time_col))
    for stage in scoring.values():
        if uses_feature_context(stage):
            stage.ctx = at_test.get(stage.cfg)
    return catalog, retrieval


def refit_candidates(ds: Dataset, cfg: Config, split: Split, window: str, first) -> tuple[Catalog, object]:
    """Walk-forward refit (``retrieval.refit``): the candidate stage retrained on every window before
    ``window``, with those windows' users, for the epochs early stopping chose for ``first`` (the stage trained
    on the first window). Each scoring stage is trained on the candidates and scores of the refit as of its own
    window, and the bundle serves the refit as of the test window: every upstream score a stage learns from
    comes from a model that never saw the row's label and is as fresh, relative to the rows, as the one it is
    served. Returns (catalogue, fitted candidate stage)."""
    history = split.before(window)
    catalog = Catalog.from_dataset(ds, train=history)
    recalls = [row.get(f"recall@{cfg.retrieval.two_tower.eval_k}", float("nan")) for row in first.history]
    finite = [i for i, r in enumerate(recalls) if r == r]
    best_epoch = (max(finite, key=lambda i: recalls[i]) + 1) if finite else len(recalls)
    tt = dataclasses.replace(cfg.retrieval.two_tower, max_epochs=max(best_epoch, 1))
    logger.info("retrieval.refit: the candidate stage is retrained on the %d windows before %r for %d epochs "
                "(%d users)", split.names.index(window), window, tt.max_epochs, catalog.n_users)
    name = first.name
    stage = build_stage(name, stage_type_of(cfg, name), dataclasses.replace(cfg.retrieval, two_tower=tt))
    return catalog, stage.fit(FitContext(ds, catalog, split, split.names[0], history.iloc[:0], train=history,
                                         seed=cfg.seed))


def uses_feature_context(stage) -> bool:
    """Whether a scoring stage computes :mod:`recsys.features` with a point-in-time context (``ctx``, fitted
    from its config's ``graph`` and ``feature_params``): those are re-fitted as of each window they serve."""
    return hasattr(stage, "ctx") and hasattr(stage.cfg, "graph") and hasattr(stage.cfg, "feature_params")


def stage_type_of(cfg: Config, name: str) -> str:
    return cfg.engine.type_of(name)


def load_system(bundle: Bundle, name: str, catalog: Catalog | None = None, cache: dict | None = None) -> Engine:
    """Build system ``name`` of a verified bundle: a loop over its manifest stages (each loaded once per
    ``cache``, so systems that share a stage share the object)."""
    systems = bundle.manifest.get("systems", {})
    if name not in systems:
        raise ValueError(f"{bundle.path}: the bundle has no system {name!r}; systems: {sorted(systems)}")
    catalog = catalog or load_catalog(bundle.stage_dir("catalog"))
    cache = {} if cache is None else cache
    entries = systems[name]["stages"]

    def get(e):
        folder = check_name(e["folder"], f"{bundle.path}: manifest systems.{name}: stage folder")
        if folder not in cache:
            stage = stage_type(e["type"]).load_class().load(bundle.stage_dir(folder), catalog)
            stage.name = e["name"]
            cache[folder] = stage
        return cache[folder]

    engine = Engine(get(entries[0]), [(get(e), int(e["k"])) for e in entries[1:]], int(entries[0]["k"]),
                    name=name, version=bundle.version, catalog=catalog)
    derive = systems[name].get("derive")
    if derive is not None:
        engine = DERIVATIONS[derive](engine)
        if engine is None:
            raise ValueError(f"{bundle.path}: system {name!r}'s derivation {derive!r} changes nothing")
        engine.name = name
    return engine


def load_engine(path: str | Path) -> Engine:
    """Verify a bundle (every checksum before parsing) and build its engine (the configured funnel)."""
    return load_system(load_bundle(path), "engine")


def load_systems(path: str | Path, names=None) -> dict[str, Engine]:
    """Every system of a bundle (or those ``names``), the engine first; stages shared between systems are
    loaded once."""
    bundle = load_bundle(path)
    catalog = load_catalog(bundle.stage_dir("catalog"))
    cache: dict = {}
    have = list(bundle.manifest.get("systems", {}))
    want = [n for n in have if names is None or n in names]
    return {n: load_system(bundle, n, catalog, cache) for n in want}
