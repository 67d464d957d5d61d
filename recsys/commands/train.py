"""``recsys train``: fit every configured stage on its window and write a versioned bundle.

The config is checked against the dataset first (:func:`recsys.validate.check_config`): a mismatch is a
one-line error before any training, and label names the dataset lacks are replaced by derived ones (logged).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train the engine's stages and write a bundle (artifacts/NAME/<version>/)")
    p.add_argument("--data", required=True, type=Path, help="canonical dataset folder")
    p.add_argument("--out", required=True, type=Path, help="bundle folder, e.g. artifacts/demo")
    p.add_argument("--config", type=Path, help="engine config YAML (default: built-in defaults)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="config override, e.g. --set retrieval.index_factory=Flat (repeatable)")
    p.set_defaults(func=cmd_train)


def cmd_train(args: argparse.Namespace) -> int:
    from recsys.config import load_config
    from recsys.data.schema import read_dataset
    from recsys.training import train_engine
    from recsys.validate import check_config

    cfg = load_config(args.config, args.overrides)
    ds = read_dataset(args.data)
    cfg = check_config(cfg, ds)  # the whole config against the dataset, before any training
    bundle = train_engine(ds, cfg, args.out)
    print(json.dumps({"bundle": str(bundle.path), "version": bundle.version, "stages": bundle.stages,
                      "metrics": bundle.manifest["metrics"]}, indent=2, default=str))
    return 0
