"""``recsys evaluate``: full-ranking offline evaluation of baselines (and the engine) on a dataset's test window.

    recsys evaluate --data DIR --out DIR [--config FILE] [--set KEY=VALUE ...] [--systems random,popularity]
                    [--backend local|ray] [--ray-address ADDR] [--export-run] [--overwrite]

Writes the report folder (``metrics.json``, ``report.md``, plots; TREC files with ``--export-run``; see
:mod:`offline_eval.report`) and prints the systems x headline metrics table. The oracle is added automatically
when the dataset has ground truth (a synthetic world). With ``--bundle``, the split (of ``--config`` or
``--set``) and the dataset must be the ones the bundle was trained on (:func:`recsys.bundle.check_trained_on`).

The config is checked against the dataset before any work (:func:`recsys.validate.check_config`).
``--systems`` names any of the baselines and, with ``--bundle``, of the bundle's engine systems (``engine``
and its ablations: ``retrieval_only``, ``prerank_only``, ``no_prerank``, ...); without it every configured
baseline and every engine system the bundle has are evaluated. Engine systems that compute the same function
(the same stages, cut-offs and weights, e.g. ``shared_bottom`` and ``single_task`` with one task) are
evaluated once: :func:`drop_identical`; the report names the skipped twin under ``identical_systems``.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import logging
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="full-ranking offline evaluation (baselines, oracle, engine) with a report")
    p.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--config", type=Path, help="engine config YAML (its split, eval and ray sections are used)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set eval.max_users=500 (repeatable)")
    p.add_argument("--systems", type=_csv, default=None, metavar="NAMES",
                   help="comma-separated systems to evaluate: baselines and, with --bundle, engine systems "
                        "(engine, retrieval_only, prerank_only, no_prerank, ...); default: eval.baselines and "
                        "every engine system of the bundle; 'none' for no baseline")
    p.add_argument("--backend", choices=["local", "ray"], default=None,
                   help="where shards run (default: eval.backend of the config)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. auto or ray://host:10001) instead of starting a local one; "
                        "implies --backend ray")
    p.add_argument("--bundle", type=Path, default=None,
                   help="evaluate the engine of this bundle (a version folder or its parent: latest) and its "
                        "ablations beside the baselines")
    p.add_argument("--export-run", action="store_true", help="also write run.trec / qrels.trec (external ids)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_evaluate)


def _csv(text: str) -> list[str]:
    names = [t.strip() for t in text.split(",") if t.strip()]
    return [] if names == ["none"] else names


def build_systems(args: argparse.Namespace, ds, cfg) -> dict:
    """Systems other than the baselines, by name: the engine from ``--bundle`` and its ablations."""
    if args.bundle is None:
        return {}
    from recsys.data.catalog import Catalog
    from recsys.training import load_systems

    systems = load_systems(args.bundle)
    engine = systems["engine"]
    if engine.catalog is not None and Catalog.from_dataset(ds).items != engine.catalog.items:
        raise ValueError(
            f"{args.bundle}: the bundle's item catalogue differs from {args.data}'s; evaluate a bundle on the "
            "dataset it was trained on"
        )
    return systems


def select_systems(names: list[str] | None, engine_systems: dict, baselines: tuple[str, ...]):
    """``--systems`` split into (baseline names, engine systems by name); None: ``baselines`` and every engine
    system. A name that is neither is an error listing what can be chosen; ``oracle`` is accepted (it is added
    whenever the dataset has ground truth)."""
    from offline_eval.baselines import BASELINES

    if names is None:
        return list(baselines), dict(engine_systems)
    unknown = [n for n in names if n not in BASELINES and n not in engine_systems and n != "oracle"]
    if unknown:
        engines = ", ".join(engine_systems) or "none without --bundle"
        raise ValueError(f"--systems: unknown system(s) {unknown}; baselines: {', '.join(BASELINES)}; engine "
                         f"systems: {engines}")
    names = list(dict.fromkeys(names))  # a name listed twice runs once
    return [n for n in names if n in BASELINES], {n: engine_systems[n] for n in names if n in engine_systems}


def drop_identical(systems: dict) -> tuple[dict, dict[str, str]]:
    """Engine systems without the ones that compute the same function as an earlier one.

    Two engines are identical when their :func:`system_fingerprint` agree: the same retrieval stage object and
    ``retrieve_k``, and scoring stages with equal names, cut-offs and content (every array, weight, tree and
    setting they hold, the name of the multi-task core aside: with one task a shared bottom and a single-task
    network are the same layers, and their weights decide). Returns (kept systems, {dropped: kept twin}).
    Other rankers are always kept.
    """
    kept: dict = {}
    twins: dict[str, str] = {}
    seen: dict[str, str] = {}
    memo: dict[int, tuple] = {}
    for name, system in systems.items():
        fp = system_fingerprint(system, memo)
        if fp is not None and fp in seen:
            twins[name] = seen[fp]
            logger.info("system %s computes the same as %s (same stages and weights): evaluated once", name,
                        seen[fp])
            continue
        if fp is not None:
            seen[fp] = name
        kept[name] = system
    return kept, twins


def system_fingerprint(system: Any, memo: dict[int, tuple] | None = None) -> str | None:
    """A digest of what an engine system computes (see :func:`drop_identical`); None for other rankers."""
    if not (hasattr(system, "stages") and hasattr(system, "retrieval")):
        return None
    memo = {} if memo is None else memo
    h = hashlib.sha256(repr((id(system.retrieval), getattr(system, "retrieve_k", None))).encode())
    for stage, cutoff in system.stages:
        h.update(repr((getattr(stage, "name", None), cutoff)).encode())
        h.update(_digest(stage, memo, set()))
    return h.hexdigest()


#: attributes that do not change what a stage computes (its label, its training record, the core's name)
_NOT_BEHAVIOUR = frozenset({"name", "valid_metrics", "fit_history", "history", "arch"})


def _digest(obj: Any, memo: dict[int, tuple], active: set[int]) -> bytes:
    """sha256 of ``obj``'s content: arrays by value, torch modules by their layer types and weights (not the
    parameter names), LightGBM boosters by their model text, objects by their attributes. What it cannot read
    (an object of a C library) is identified by its ``id``, so it only equals itself."""
    import numpy as np
    import pandas as pd

    key = id(obj)
    if key in memo:
        return memo[key][1]
    h = hashlib.sha256(type(obj).__qualname__.encode())
    if obj is None or isinstance(obj, (bool, int, float, str, bytes, complex)):
        h.update(repr(obj).encode())
        return h.digest()  # small values: not memoised (ids of small ints are reused)
    if key in active:  # a cycle
        h.update(b"cycle")
        return h.digest()
    active.add(key)
    try:
        _feed(obj, h, memo, active, np, pd)
    finally:
        active.discard(key)
    memo[key] = (obj, h.digest())  # the object is kept alive with its digest: its id cannot be reused meanwhile
    return memo[key][1]


def _feed(obj, h, memo, active, np, pd) -> None:
    import enum

    if isinstance(obj, enum.Enum):
        h.update(repr(obj.value).encode())
    elif isinstance(obj, np.ndarray):
        h.update(f"{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes() if obj.dtype != object else repr(obj.tolist()).encode())
    elif isinstance(obj, np.generic):
        h.update(repr(obj.item()).encode())
    elif isinstance(obj, (pd.Series, pd.DataFrame, pd.Index)):
        h.update(repr(getattr(obj, "shape", None)).encode())
        frame = pd.Series(obj) if isinstance(obj, pd.Index) else obj
        h.update(pd.util.hash_pandas_object(frame, index=not isinstance(obj, pd.Index)).to_numpy().tobytes())
    elif isinstance(obj, dict):
        for k in sorted(obj, key=repr):
            h.update(_digest(k, memo, active) + _digest(obj[k], memo, active))
    elif isinstance(obj, (list, tuple, set, frozenset)):
        items = sorted(obj, key=repr) if isinstance(obj, (set, frozenset)) else obj
        for v in items:
            h.update(_digest(v, memo, active))
    elif _is_torch_module(obj):
        h.update(repr([type(m).__name__ for m in obj.modules() if not list(m.children())]).encode())
        for tensor in obj.state_dict().values():
            h.update(_digest(tensor.detach().cpu().numpy(), memo, active))
    elif hasattr(obj, "model_to_string"):  # a LightGBM booster
        h.update(obj.model_to_string().encode())
    elif hasattr(obj, "tocsr") and hasattr(obj, "shape"):  # a scipy sparse matrix
        m = obj.tocsr()
        for part in (np.asarray(m.shape), m.data, m.indices, m.indptr):
            h.update(_digest(part, memo, active))
    elif dataclasses.is_dataclass(obj):
        for f in dataclasses.fields(obj):
            if f.name not in _NOT_BEHAVIOUR:
                h.update(f.name.encode() + _digest(getattr(obj, f.name), memo, active))
    elif isinstance(obj, Path):
        h.update(str(obj).encode())
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in _OWN_PACKAGES:
        attrs = vars(obj)
        for k in sorted(attrs):
            if k not in _NOT_BEHAVIOUR:
                h.update(k.encode() + _digest(attrs[k], memo, active))
    else:
        h.update(repr(id(obj)).encode())


_OWN_PACKAGES = ("recsys", "offline_eval", "serving")


def _is_torch_module(obj) -> bool:
    try:
        import torch
    except ImportError:  # pragma: no cover
        return False
    return isinstance(obj, torch.nn.Module)


def engine_extras(systems: dict, ds, cfg) -> tuple[dict, dict]:
    """Report sections only an engine has: the heavy ranker's calibration on the test window
    (``calibration``: the engine, per task; ``calibration_by_system``: every system with a heavy ranker, plus
    the reliability bins) and the retrieval index's recall against exact search (``retrieval_index``)."""
    from recsys.data.split import split_dataset
    from recsys.experiments.evaluation import calibration_reports, index_recall

    engines = {n: s for n, s in systems.items() if hasattr(s, "stages") and hasattr(s, "retrieval")}
    if not engines:
        return {}, {}
    split = split_dataset(ds, cfg.split)
    reports, bins = calibration_reports(engines, ds, split)
    extra = {"calibration": reports.get("engine", {})}
    if reports:
        extra["calibration_by_system"] = reports
    if "engine" in engines:
        from offline_eval.evaluator import EvalData
        from recsys.data.catalog import Catalog

        last = split.names[-1]
        data = EvalData.from_split(split, cfg.eval, Catalog.from_dataset(ds, train=split.before(last)), last)
        extra["retrieval_index"] = index_recall(engines["engine"], data.requests)
    return extra, {k: v for k, v in bins.items() if k.startswith("engine/")}


def cmd_evaluate(args: argparse.Namespace) -> int:
    from offline_eval.evaluator import run_evaluation
    from offline_eval.report import check_output, format_table
    from recsys.config import load_config
    from recsys.data.schema import read_dataset

    check_output(args.out, args.overwrite)  # before any work
    bundle = None
    if args.bundle is not None:
        from recsys.bundle import load_bundle

        bundle = load_bundle(args.bundle)
    if bundle is not None and args.config is None:
        # the bundle's own resolved config: the same split windows the stages were trained on
        from recsys.config import Config, apply_overrides, from_dict

        cfg = from_dict(Config, apply_overrides(bundle.manifest["config"], args.overrides))
    else:
        cfg = load_config(args.config, args.overrides)
    from recsys.bundle import check_trained_on
    from recsys.configlib import SplitMethod

    deferred = cfg.split.method is SplitMethod.AUTO  # resolved by check_config below, as training resolved it
    if bundle is not None and not deferred:
        check_trained_on(bundle, cfg.split, args.data)  # a config's or --set's split must be the bundle's
    backend = args.backend or ("ray" if args.ray_address else cfg.eval.backend.value)
    ray_cfg = cfg.ray
    if args.ray_address:
        ray_cfg = dataclasses.replace(cfg.ray, address=args.ray_address)
    ds = read_dataset(args.data)
    from offline_eval.baselines import BASELINES
    from recsys.validate import check_config

    named = None if args.systems is None else [n for n in args.systems if n in BASELINES]
    cfg = check_config(cfg, ds, stages=args.bundle is not None, baselines=named)  # before any work
    if bundle is not None and deferred:
        check_trained_on(bundle, cfg.split, args.data)
    baselines, systems = select_systems(args.systems, build_systems(args, ds, cfg), cfg.eval.baselines)
    systems, twins = drop_identical(systems)
    extra, reliability = engine_extras(systems, ds, cfg)
    if twins:
        extra["identical_systems"] = twins
    metrics = run_evaluation(
        ds,
        cfg,
        args.out,
        systems=systems,
        baselines=baselines,
        backend=backend,
        ray_cfg=ray_cfg,
        export_run=args.export_run,
        overwrite=args.overwrite,
        extra=extra,
        reliability=reliability,
    )
    print(f"{metrics['dataset']['name']}: {metrics['n_users']} test users, {metrics['dataset']['counts']['items']} "
          f"items (full ranking)")
    print(format_table(metrics))
    print(f"report: {args.out / 'report.md'}")
    return 0
