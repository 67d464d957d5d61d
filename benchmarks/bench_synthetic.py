"""Benchmark: generate (and write) the synthetic world at given presets; prints one JSON document.

    python benchmarks/bench_synthetic.py --presets demo,bench [--seed 0] [--out-dir DIR] [--keep] [--no-write]

Each preset runs in a fresh child process so that its peak RSS (``resource.getrusage``) is its own. Reported per
preset: sizes, generation and write seconds, peak RSS after generation and after writing, on-disk size, CTR,
like rate, and the Spearman correlation of the link graph's PageRank with item quality (PageRank by power
iteration on scipy.sparse, damping 0.85, dangling mass spread uniformly -- the networkx definition).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux: KiB


def _pagerank(src: np.ndarray, dst: np.ndarray, n: int, d: float = 0.85, tol: float = 1e-10) -> np.ndarray:
    import scipy.sparse as sp

    a = sp.csr_matrix((np.ones(len(src)), (dst, src)), shape=(n, n))
    out = np.bincount(src, minlength=n).astype(np.float64)
    dangling = out == 0
    inv = np.where(dangling, 0.0, 1.0 / np.maximum(out, 1.0))
    pr = np.full(n, 1.0 / n)
    for _ in range(200):
        new = (1 - d) / n + d * (a @ (pr * inv) + pr[dangling].sum() / n)
        done = np.abs(new - pr).sum() < tol * n
        pr = new
        if done:
            break
    return pr


def run_one(preset: str, seed: int, out_dir: Path | None) -> dict:
    from scipy.stats import spearmanr

    from recsys.data.synthetic import ITEM_ID_OFFSET, PRESETS, generate_world

    cfg = PRESETS[preset]
    t0 = time.perf_counter()
    world = generate_world(cfg, seed)
    t_gen = time.perf_counter() - t0
    rss_gen = _peak_rss_mib()
    df = world.interactions
    res = {
        "preset": preset,
        "seed": seed,
        "n_users": len(world.users),
        "n_items": len(world.items),
        "n_impressions": len(df),
        "n_sessions": int(world.params["stats"]["sessions"]),
        "n_links": len(world.item_links),
        "generate_seconds": round(t_gen, 2),
        "peak_rss_mib_after_generate": round(rss_gen, 1),
        "ctr": round(float(df["click"].mean()), 5),
        "like_rate": round(float(df["like"].mean()), 5),
        "like_given_click": round(float(df.loc[df["click"] == 1, "like"].mean()), 4),
        "mean_p_click": round(float(df["p_click"].mean()), 5),
        "interactions_in_memory_mib": round(df.memory_usage(deep=True).sum() / 2**20, 1),
    }
    n = len(world.items)
    imp = np.sort(np.bincount(df["item_id"].to_numpy() - ITEM_ID_OFFSET, minlength=n))[::-1]
    res["top10pct_items_impression_share"] = round(float(imp[: max(1, n // 10)].sum() / imp.sum()), 4)
    t1 = time.perf_counter()
    pr = _pagerank(
        world.item_links["src"].to_numpy() - ITEM_ID_OFFSET, world.item_links["dst"].to_numpy() - ITEM_ID_OFFSET, n
    )
    res["pagerank_quality_spearman"] = round(float(spearmanr(pr, world.truth["item_quality"]).statistic), 4)
    res["pagerank_created_at_spearman"] = round(float(spearmanr(pr, world.items["created_at"]).statistic), 4)
    res["pagerank_seconds"] = round(time.perf_counter() - t1, 2)
    if out_dir is not None:
        out = out_dir / f"synthetic-{preset}"
        t2 = time.perf_counter()
        world.save(out, overwrite=True)
        res["write_seconds"] = round(time.perf_counter() - t2, 2)
        res["disk_mib"] = round(sum(f.stat().st_size for f in out.rglob("*") if f.is_file()) / 2**20, 1)
        res["peak_rss_mib_after_write"] = round(_peak_rss_mib(), 1)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="demo", help="comma-separated preset names (tiny, demo, bench)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out-dir", type=Path, default=None, help="where to write (default: a temporary folder)")
    ap.add_argument("--keep", action="store_true", help="keep the written datasets")
    ap.add_argument("--no-write", action="store_true", help="time generation only")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.child:  # one preset in this (fresh) process; print its JSON line
        out = None if args.no_write else args.out_dir
        print(json.dumps(run_one(args.child, args.seed, out)))
        return 0

    from recsys.data.synthetic import PRESETS

    presets = [p.strip() for p in args.presets.split(",") if p.strip()]
    unknown = [p for p in presets if p not in PRESETS]
    if unknown:
        ap.error(f"unknown preset(s) {unknown}; presets: {', '.join(PRESETS)}")
    tmp = None
    out_dir = args.out_dir
    if out_dir is None and not args.no_write:
        tmp = Path(tempfile.mkdtemp(prefix="bench_synthetic-"))
        out_dir = tmp
    results = []
    try:
        for p in presets:
            cmd = [sys.executable, os.path.abspath(__file__), "--child", p, "--seed", str(args.seed)]
            cmd += ["--no-write"] if args.no_write else ["--out-dir", str(out_dir)]
            t0 = time.perf_counter()
            proc = subprocess.run(cmd, capture_output=True, text=True)
            if proc.returncode != 0:
                results.append({"preset": p, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            res = json.loads(proc.stdout.strip().splitlines()[-1])
            res["process_seconds"] = round(time.perf_counter() - t0, 2)
            results.append(res)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    doc = {
        "benchmark": "synthetic_world",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "cpu_count": os.cpu_count(),
            "python": platform.python_version(),
            "numpy": np.__version__,
        },
        "results": results,
    }
    print(json.dumps(doc, indent=2))
    return 0 if all("error" not in r for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
