"""``recsys serve``: the online ranking service over a bundle (FastAPI on uvicorn, or Ray Serve).

    recsys serve --bundle artifacts/NAME [--host 127.0.0.1] [--port 8000] [--config FILE] [--set KEY=VALUE ...]
                 [--ray --replicas N --ray-address ADDR] [--access-log]

The bundle (a version folder, or a bundle folder: its ``latest``) is verified, loaded and warmed up before the
port is opened (a corrupt bundle is an error, exit code 2). Settings come from the ``serving:`` section of
``--config`` (see :class:`serving.config.ServingConfig`) and ``--set serving.KEY=VALUE``; ``--host`` /
``--port`` / ``--replicas`` override it. The admin token for ``POST /admin/reload`` is read from the
environment variable ``serving.admin_token_env`` (default ``RECSYS_ADMIN_TOKEN``); without it there are no
admin routes.
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
from pathlib import Path

logger = logging.getLogger(__name__)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("serve", help="serve a bundle over HTTP (POST /v1/rank; Ray Serve with --ray)")
    p.add_argument("--bundle", required=True, type=Path, help="bundle folder (its latest) or a version folder")
    p.add_argument("--host", default=None, help="address to bind (default: serving.host, 127.0.0.1)")
    p.add_argument("--port", type=int, default=None, help="port (default: serving.port, 8000)")
    p.add_argument("--config", type=Path, help="config YAML; its serving: section is used")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override, e.g. --set serving.budget_ms=100 (repeatable)")
    p.add_argument("--ray", action="store_true", help="deploy on Ray Serve instead of a single uvicorn process")
    p.add_argument("--replicas", type=int, default=None, help="Ray Serve replicas (default: serving.replicas)")
    p.add_argument("--ray-address", default=None, metavar="ADDR",
                   help="join this Ray cluster (e.g. auto) instead of starting a local Ray; implies --ray")
    p.add_argument("--access-log", action="store_true", help="log every HTTP request (uvicorn access log)")
    p.set_defaults(func=cmd_serve)


def serving_config(path: Path | None, overrides: list[str]):
    """The ServingConfig of ``path``'s ``serving:`` section plus ``serving.*`` overrides (checked like any
    config section: unknown keys and wrong types name the key)."""
    from recsys.config import Config, ConfigError, apply_overrides, from_dict, load_config, load_yaml
    from serving.config import ServingConfig

    if "serving" in {f.name for f in dataclasses.fields(Config)}:
        return load_config(path, overrides).serving
    raw = (load_yaml(path) or {}) if path is not None else {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: the top level must be a mapping of sections")
    bad = [o for o in overrides if not o.split("=", 1)[0].strip().startswith("serving.")]
    if bad:
        raise ConfigError(f"--set {bad[0]!r}: recsys serve only takes serving.* keys (e.g. serving.budget_ms=100)")
    section = apply_overrides({"serving": raw.get("serving") or {}}, overrides)["serving"]
    try:
        return from_dict(ServingConfig, section, prefix="serving")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}" if path is not None else str(exc)) from None


def cmd_serve(args: argparse.Namespace) -> int:
    from serving.state import set_threads

    cfg = serving_config(args.config, args.overrides)
    changes = {k: v for k, v in (("host", args.host), ("port", args.port), ("replicas", args.replicas))
               if v is not None}
    if changes:
        from recsys.config import from_dict, to_dict
        from serving.config import ServingConfig

        cfg = from_dict(ServingConfig, {**to_dict(cfg), **changes}, prefix="serving")
    set_threads(cfg.threads)
    if args.ray or args.ray_address:
        return _serve_ray(args, cfg)

    import uvicorn

    from serving.app import create_app
    from serving.state import ServiceState

    state = ServiceState(cfg, args.bundle)
    state.load_initial()  # verify + warm up before opening the port; BundleError -> exit 2
    app = create_app(state)
    logger.info("serving %s (version %s) on http://%s:%d (docs: /docs)", args.bundle, state.version, cfg.host,
                cfg.port)
    uvicorn.run(app, host=cfg.host, port=cfg.port, access_log=args.access_log, log_level="info",
                timeout_graceful_shutdown=10)
    return 0


def _interrupt(signum, frame) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _serve_ray(args: argparse.Namespace, cfg) -> int:
    from recsys.config import RayConfig
    from recsys.distributed import init_ray, shutdown

    try:
        from serving import ray_serve
    except ImportError as exc:
        raise ValueError(f"--ray needs Ray Serve (pip install 'ray[serve]'): {exc}") from None
    from recsys.bundle import load_bundle

    load_bundle(args.bundle)  # fail fast on a corrupt bundle before starting Ray
    owned = init_ray(RayConfig(address=args.ray_address, num_cpus=max(2, int(cfg.replicas * cfg.replica_num_cpus))))
    signal.signal(signal.SIGTERM, _interrupt)
    try:
        ray_serve.deploy(args.bundle, cfg, host=cfg.host, port=cfg.port,
                         admin_token=os.environ.get(cfg.admin_token_env) or None)
        logger.info("Ray Serve is serving %s on http://%s:%d (Ctrl-C to stop)", args.bundle, cfg.host, cfg.port)
        ray_serve.wait_forever()
    except KeyboardInterrupt:
        logger.info("stopping Ray Serve")
    finally:
        ray_serve.stop()
        if owned:
            shutdown()
    return 0
