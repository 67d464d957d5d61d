"""Two-tower training throughput (examples / s) on synthetic examples, default 2 torch threads.

Examples: E positives over U users and N items (Zipf item popularity), histories of up to L items, three
categorical user/context features and one categorical + two numeric item features; the model and loss are
the engine's (in-batch sampled softmax with logQ correction), without validation. Reports the steady-state
rate of each configuration (first epoch excluded when there are several), plus the
time per step split into forward / loss / backward / optimizer for the default configuration.

    .venv/bin/python benchmarks/bench_two_tower.py [--examples 200000 --threads 2]

Prints one JSON document to stdout.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.bench_index import machine_info  # noqa: E402
from recsys.retrieval.train import TrainExamples, TwoTowerConfig, _optimizers, train_two_tower  # noqa: E402
from recsys.retrieval.two_tower import TowerSpec, TwoTower, sampled_softmax_loss  # noqa: E402


def make_examples(rng, e: int, n_users: int, n_items: int, history_len: int):
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    items = rng.choice(n_items, size=e, p=p / p.sum())
    users = rng.integers(0, n_users, e)
    times = rng.integers(0, 10**7, e)
    cat = np.stack([rng.integers(0, c, e) for c in (6, 16, 25)], axis=1)
    return TrainExamples.build(users, items, times, n_items, history_len, cat, np.zeros((e, 0), np.float32))


def build_model(n_users: int, n_items: int, cfg: TwoTowerConfig, seed: int, rng) -> TwoTower:
    torch.manual_seed(seed)
    spec = TowerSpec(n_users=n_users + 1, n_items=n_items, dim=cfg.dim, emb_dim=cfg.emb_dim, hidden=cfg.hidden,
                     feature_dim=cfg.feature_dim, user_cat_cards=(7, 17, 26), item_cat_cards=(31,), item_n_numeric=2,
                     temperature=cfg.temperature)
    model = TwoTower.from_spec(spec)
    model.item_tower.item_cat.copy_(torch.from_numpy(rng.integers(0, 31, (n_items + 1, 1))))
    model.item_tower.item_num.copy_(torch.from_numpy(rng.standard_normal((n_items + 1, 2)).astype(np.float32)))
    return model


def step_breakdown(model: TwoTower, ex: TrainExamples, cfg: TwoTowerConfig, steps: int = 20) -> dict:
    torch.set_num_threads(cfg.threads)
    opts = _optimizers(model, cfg)
    rng = np.random.default_rng(0)
    acc = np.zeros(4)
    for i in range(steps + 2):
        rows = rng.choice(len(ex), cfg.batch_size, replace=False)
        inp = ex.inputs(rows)
        items = torch.from_numpy(ex.items[rows])
        t0 = time.perf_counter()
        u = model.user_embeddings(*inp.tensors())
        v = model.item_embeddings(items)
        t1 = time.perf_counter()
        loss = sampled_softmax_loss(u, v, items, torch.zeros(len(rows)), model.temperature)
        t2 = time.perf_counter()
        for o in opts:
            o.zero_grad()
        loss.backward()
        t3 = time.perf_counter()
        for o in opts:
            o.step()
        t4 = time.perf_counter()
        if i >= 2:
            acc += [t1 - t0, t2 - t1, t3 - t2, t4 - t3]
    ms = acc / steps * 1e3
    return {"forward_ms": round(ms[0], 2), "loss_ms": round(ms[1], 2), "backward_ms": round(ms[2], 2),
            "optimizer_ms": round(ms[3], 2), "batch_size": cfg.batch_size}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--examples", type=int, default=200_000)
    ap.add_argument("--users", type=int, default=50_000)
    ap.add_argument("--items", type=int, default=100_000)
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(name)s %(message)s")
    rng = np.random.default_rng(args.seed)
    base = TwoTowerConfig(threads=args.threads, max_epochs=args.epochs, seed=args.seed)
    t = time.perf_counter()
    ex = make_examples(rng, args.examples, args.users, args.items, base.history_len)
    build_s = time.perf_counter() - t
    configs = {
        "default (B=1024, logQ)": base,
        "mixed negatives M=1024": dataclasses.replace(base, n_uniform_negatives=1024),
        "B=4096": dataclasses.replace(base, batch_size=4096),
    }
    out = {
        "benchmark": "two_tower_training",
        "machine": machine_info(),
        "torch": torch.__version__,
        "params": {"examples": args.examples, "users": args.users, "items": args.items, "epochs": args.epochs,
                   "threads": args.threads, "history_len": base.history_len, "dim": base.dim,
                   "hidden": list(base.hidden)},
        "example_build_s": round(build_s, 3),
        "configs": {},
    }
    for name, cfg in configs.items():
        model = build_model(args.users, args.items, cfg, args.seed, np.random.default_rng(1))
        _, hist = train_two_tower(model, ex, None, cfg)
        rates = [h["examples_per_s"] for h in hist]
        steady = rates[1:] if len(rates) > 1 else rates
        out["configs"][name] = {"examples_per_s": round(float(np.mean(steady)), 1),
                                "per_epoch": [round(r, 1) for r in rates]}
        logging.info("%s: %s", name, out["configs"][name])
    model = build_model(args.users, args.items, base, args.seed, np.random.default_rng(1))
    out["step_breakdown"] = step_breakdown(model, ex, base)
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
