"""Full-ranking offline evaluation, local vs Ray (2 workers), on the synthetic demo world.

Every test user ranks the whole catalogue with one fitted baseline (default item-kNN); the same shards run in
this process and as Ray tasks. Prints one JSON object: machine, sizes, seconds, speed-up, and the largest
difference between the two backends' per-user metrics (must be 0).

    .venv/bin/python benchmarks/bench_evaluate.py [--preset demo] [--baseline itemknn] [--shards 8]

Ray start-up (``ray.init``) and the first Ray call (worker processes start, the system is shipped) are
reported apart from the warm timing used for the speed-up.
"""

from __future__ import annotations

import sys as _sys
from pathlib import Path as _Path

_sys.path.insert(0, str(_Path(__file__).resolve().parent))
from machine import machine_info as shared_machine_info  # noqa: E402  (benchmarks/machine.py)

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def machine() -> dict:
    return shared_machine_info()


def best_of(fn, repeats: int):
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return min(times), out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="demo")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--baseline", default="itemknn")
    ap.add_argument("--shards", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args(argv)

    import numpy as np

    from offline_eval.baselines import make_baseline
    from offline_eval.evaluator import EvalData, evaluate
    from recsys.config import Config, EvalConfig, RayConfig
    from recsys.data.catalog import Catalog
    from recsys.data.split import split_dataset
    from recsys.data.synthetic import synthesize
    from recsys.distributed import init_ray, shutdown

    cfg = Config()
    ecfg = EvalConfig(gains={"click": 1.0, "like": 1.0}, shards=args.shards)
    sec: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench_evaluate-") as tmp:
        t0 = time.perf_counter()
        ds = synthesize(args.preset, args.seed, Path(tmp) / "data")
        sec["synthesize"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    split = split_dataset(ds, cfg.split)
    before = split.before("test")
    catalog = Catalog.from_dataset(ds, train=before)
    data = EvalData.from_split(split, ecfg, catalog)
    sec["eval_data"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    system = make_baseline(args.baseline, seed=0).fit(before, catalog, ds.schema)
    sec["fit"] = time.perf_counter() - t0

    sec["local"], local = best_of(lambda: evaluate(system, data, ecfg, backend="local"), args.repeats)
    t0 = time.perf_counter()
    init_ray(RayConfig(num_cpus=args.workers))
    sec["ray_init"] = time.perf_counter() - t0
    try:
        t0 = time.perf_counter()
        evaluate(system, data, ecfg, backend="ray")
        sec["ray_first_call"] = time.perf_counter() - t0
        sec["ray"], remote = best_of(lambda: evaluate(system, data, ecfg, backend="ray"), args.repeats)
    finally:
        shutdown()
    max_diff = max(float(np.max(np.abs(local.per_user[m] - remote.per_user[m]))) for m in local.per_user)
    out = {
        "benchmark": "full-ranking offline evaluation, local vs ray",
        "machine": machine(),
        "sizes": {
            "preset": args.preset,
            "test_users": data.n_users,
            "items": data.n_items,
            "user_item_scores": data.n_users * data.n_items,
            "k": int(local.ranked.shape[1]),
            "metrics": len(local.per_user),
            "shards": args.shards,
            "ray_workers": args.workers,
            "baseline": args.baseline,
        },
        "seconds": {k: round(v, 4) for k, v in sec.items()},
        "users_per_second": {"local": data.n_users / sec["local"], "ray": data.n_users / sec["ray"]},
        "speedup_ray_vs_local": sec["local"] / sec["ray"],
        "max_abs_diff_local_vs_ray": max_diff,
        "ndcg@10": local.means["ndcg@10"],
    }
    print(json.dumps(out, indent=2))
    return 0 if max_diff <= 1e-12 else 1


if __name__ == "__main__":
    sys.exit(main())
