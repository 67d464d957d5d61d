"""``recsys experiment compare``: systems of bundles and baselines on the same test users, paired over users and
seeds (:mod:`recsys.experiments.compare`, statistics in :mod:`offline_eval.compare`).

    recsys experiment compare --data DIR --out DIR [--bundle PATH ...] [--systems engine,no_exposure,popularity]
                              [--system NAME=PATH[:SYSTEM] ...] [--reference engine] [--metrics ndcg@10,...]
                              [--config FILE] [--set KEY=VALUE ...] [--max-users N] [--alpha 0.05]
                              [--power 0.8] [--bootstrap-samples 2000] [--overwrite]

``--bundle`` repeated: replicates of one config trained with different seeds (their configs may differ only in
their seeds); every name of ``--systems`` that is not a baseline is a system of each of them, evaluated once per
replicate. ``--system NAME=PATH[:SYSTEM]`` adds system SYSTEM (default ``engine``) of another bundle under
NAME (repeat the same NAME with other bundles for its replicates), so engines of different bundles can be
compared. The config is the first bundle's (``--config`` replaces it); every bundle must have been trained on
its split and on ``--data`` (:func:`recsys.bundle.check_trained_on`), else a one-line error.
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(exp: argparse._SubParsersAction) -> None:
    p = exp.add_parser("compare", help="systems of bundles and baselines on the same users: paired differences "
                                       "over users and seeds, Holm, MDE, segments")
    p.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    p.add_argument("--out", required=True, type=Path, help="report folder to write")
    p.add_argument("--bundle", type=Path, action="append", default=[], metavar="PATH",
                   help="a bundle (repeat: seed replicates of one config); its systems are named in --systems")
    p.add_argument("--systems", default=None, metavar="NAMES",
                   help="comma-separated systems: baselines and systems of the --bundle(s) (default: engine "
                        "and eval.baselines with --bundle, else eval.baselines)")
    p.add_argument("--system", dest="extra_systems", action="append", default=[], metavar="NAME=PATH[:SYSTEM]",
                   help="system SYSTEM (default engine) of another bundle, named NAME (repeatable; the same NAME "
                        "again adds a replicate)")
    p.add_argument("--reference", default=None,
                   help="the system every other is compared with (default: engine if compared, else the first)")
    p.add_argument("--metrics", default=None, metavar="NAMES",
                   help="comma-separated metrics (default: ndcg@10,recall@10,recall@100, plus true_ndcg@10 on a "
                        "synthetic world)")
    p.add_argument("--config", type=Path, help="engine config YAML (default: the first bundle's)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set eval.head_fraction=0.5 (repeatable)")
    p.add_argument("--max-users", type=int, default=None, metavar="N",
                   help="evaluate a seeded sample of N test users (eval.max_users); default: all")
    p.add_argument("--alpha", type=float, default=0.05, help="size of the tests (default 0.05)")
    p.add_argument("--power", type=float, default=0.8, help="power of the minimum detectable effect (default 0.8)")
    p.add_argument("--bootstrap-samples", type=int, default=2000,
                   help="two-level bootstrap samples for the bootstrap interval (0: none; default 2000)")
    p.add_argument("--overwrite", action="store_true", help="replace the report folder if it exists")
    p.set_defaults(func=cmd_compare)


def _csv(text: str | None) -> list[str] | None:
    if text is None:
        return None
    names = [t.strip() for t in text.split(",") if t.strip()]
    return [] if names == ["none"] else names


def parse_system(text: str) -> tuple[str, Path, str]:
    """``NAME=PATH[:SYSTEM]`` -> (NAME, PATH, SYSTEM); SYSTEM defaults to ``engine``."""
    name, eq, rest = text.partition("=")
    if not eq or not name.strip() or not rest:
        raise ValueError(f"--system {text!r}: expected NAME=PATH[:SYSTEM], e.g. bpr=/runs/bundles/bpr:engine")
    path, colon, system = rest.rpartition(":")
    if not colon or "/" in system or not system:
        path, system = rest, "engine"
    return name.strip(), Path(path), system


def _replicate_key(obj, top: bool = True):
    """A manifest config without what may differ between seed replicates: every ``seed`` key (top-level and the
    stages'; the split's are kept) and the top-level ``systems`` list (which ablations were also trained)."""
    if isinstance(obj, dict):
        return {k: (v if k == "split" and top else _replicate_key(v, False)) for k, v in obj.items()
                if k != "seed" and not (top and k == "systems")}
    return obj


def check_replicates(bundles: list, paths: list[Path]) -> None:
    """``--bundle`` replicates: one config (seeds and the list of trained ablations aside) and distinct seeds,
    else ValueError. (Whether each has the compared systems is checked with ``--systems``.)"""
    if len(bundles) < 2:
        return
    first = _replicate_key(bundles[0].manifest["config"])
    seeds = [b.manifest["config"].get("seed") for b in bundles]
    for b, p in zip(bundles[1:], paths[1:]):
        other = _replicate_key(b.manifest["config"])
        if other != first:
            keys = sorted(k for k in set(first) | set(other) if first.get(k) != other.get(k))
            raise ValueError(f"--bundle {p}: not a seed replicate of {paths[0]} (configs differ in {keys}); "
                             "compare other configs with --system NAME=PATH")
    dup = sorted({s for s in seeds if seeds.count(s) > 1}, key=str)
    if dup:
        raise ValueError(f"--bundle: several bundles have seed {dup[0]}; seed replicates need different seeds")


def cmd_compare(args: argparse.Namespace) -> int:
    from offline_eval.baselines import BASELINES
    from offline_eval.report import check_output
    from recsys.bundle import check_trained_on, load_bundle
    from recsys.data.schema import read_dataset
    from recsys.experiments.compare import Source, run_compare, summary_table
    from recsys.validate import check_config

    check_output(args.out, args.overwrite)  # before any work
    extra = [parse_system(t) for t in args.extra_systems]
    bundles = [load_bundle(p) for p in args.bundle]
    check_replicates(bundles, args.bundle)
    others = {p: load_bundle(p) for _, p, _ in extra}
    if args.max_users is not None:
        if args.max_users < 1:
            raise ValueError(f"--max-users: must be >= 1, got {args.max_users}")
        args.overrides = [*args.overrides, f"eval.max_users={args.max_users}"]
    first = bundles[0] if bundles else (next(iter(others.values())) if others else None)
    from recsys.commands.experiment import _load_config

    cfg = _load_config(argparse.Namespace(config=args.config, overrides=args.overrides,
                                          bundle=first.path if first else None), first)
    ds = read_dataset(args.data)
    names = _csv(args.systems)
    if names is None:
        names = (["engine"] if bundles else []) + list(cfg.eval.baselines)
    base_names = [n for n in names if n in BASELINES]
    cfg = check_config(cfg, ds, stages=bool(bundles or others), baselines=base_names)
    for b, p in [*zip(bundles, args.bundle), *((b, p) for p, b in others.items())]:
        check_trained_on(b, cfg.split, args.data)  # after check_config resolved an auto split
    sources: dict[str, list[Source]] = {}
    for n in names:
        if n in BASELINES:
            continue
        if not bundles:
            raise ValueError(f"--systems: {n!r} is not a baseline ({', '.join(BASELINES)}); engine systems need "
                             "--bundle")
        for b, p in zip(bundles, args.bundle):
            have = b.manifest.get("systems", {})
            if n not in have:
                raise ValueError(f"--systems: {p} has no system {n!r}; its systems: {', '.join(have)}; "
                                 f"baselines: {', '.join(BASELINES)}")
            sources.setdefault(n, []).append(Source(Path(p), n))
    for n, p, s in extra:
        if n in BASELINES or (n in sources and n in names):
            raise ValueError(f"--system {n}=...: the name {n!r} is already used by --systems; pick another")
        have = others[p].manifest.get("systems", {})
        if s not in have:
            raise ValueError(f"--system {n}={p}:{s}: the bundle has no system {s!r}; its systems: {', '.join(have)}")
        sources.setdefault(n, []).append(Source(p, s))
    all_names = list(dict.fromkeys([*sources, *base_names]))
    reference = args.reference or ("engine" if "engine" in all_names else (all_names[0] if all_names else None))
    if reference is None or reference not in all_names:
        raise ValueError(f"--reference: {reference!r} is not among the compared systems {all_names}")
    res = run_compare(ds, cfg, args.out, sources, base_names, reference, _csv(args.metrics), args.alpha,
                      args.power, args.bootstrap_samples, overwrite=args.overwrite,
                      extra={"data": str(args.data), "command": "experiment compare"})
    print(f"{res['dataset']}: {res['n_users']} test users x {res['n_seeds']} seed(s), reference {reference} "
          f"({res['wall_seconds']:.0f} s)")
    for m in res["metrics"]:
        print(summary_table(res, m))
    sig = {n: [m for m, p in by.items() if p["significant"]] for n, by in res["paired"].items()}
    print(json.dumps({"significant_after_holm": sig}))
    print(f"report: {args.out / 'report.md'}")
    return 0
