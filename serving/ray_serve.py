"""The same FastAPI app as a Ray Serve deployment (``recsys serve --ray --replicas N``).

Ray Serve 2.60 API: ``@serve.deployment`` on a class wrapped by ``@serve.ingress()`` *without* an app, whose
``__serve_build_asgi_app__`` returns the ASGI app after the constructor ran (the "late-bound" ingress,
documented in ``ray.serve.ingress``). Each replica therefore loads and warms up the bundle in its constructor
(it reports healthy only when that succeeded) and then builds exactly the app of :func:`serving.app.create_app`
over its own :class:`~serving.state.ServiceState`: routes, limits, deadlines, metrics and errors are the
plain server's. ``serve.start(http_options={"host", "port"})`` places Serve's HTTP proxy, and
``serve.run(app, name, route_prefix="/")`` deploys it.

Per replica: ``max_inflight`` admitted requests (the app's own fast 503s), and Ray's
``max_ongoing_requests`` a little above it so health checks are not queued behind rank requests.
Hot reload: ``POST /admin/reload`` reaches *one* replica; to move every replica to a new bundle set
``serving.watch_interval_s`` (each replica watches the bundle's ``latest``). ``/metrics`` is per replica too.
The bundle path must be readable by every node (shared storage) when ``--ray-address`` names a cluster, and
the nodes need this package installed (the deployment class is imported by reference). The admin token is
passed to the replicas as a constructor argument.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path

from ray import serve

from serving.config import ServingConfig
from serving.state import set_threads

logger = logging.getLogger(__name__)

APP_NAME = "recsys"


@serve.deployment
@serve.ingress()
class RankingDeployment:
    """One replica: loads the bundle (verified, warmed up), then serves :func:`serving.app.create_app`."""

    def __init__(self, bundle: str, cfg: ServingConfig, admin_token: str | None = None) -> None:
        from serving.state import ServiceState

        set_threads(cfg.threads)
        self._token = admin_token
        self.state = ServiceState(cfg, bundle)
        self.state.load_initial()

    def __serve_build_asgi_app__(self):
        from serving.app import create_app

        return create_app(self.state, admin_token=self._token)


def deploy(
    bundle: str | Path,
    cfg: ServingConfig,
    host: str = "127.0.0.1",
    port: int = 8000,
    replicas: int | None = None,
    admin_token: str | None = None,
    name: str = APP_NAME,
):
    """Deploy the service on the connected Ray runtime (call :func:`recsys.distributed.init_ray` first).

    Returns the Serve deployment handle; HTTP is served by Serve's proxy at ``host:port``.
    """
    replicas = replicas or cfg.replicas
    serve.start(http_options={"host": host, "port": port})
    app = RankingDeployment.options(
        num_replicas=replicas,
        max_ongoing_requests=cfg.max_inflight + 16,
        ray_actor_options={"num_cpus": cfg.replica_num_cpus},
    ).bind(str(Path(bundle).resolve()), cfg, admin_token)
    logger.info("deploying %d replica(s) of the ranking service on Ray Serve at http://%s:%d", replicas, host, port)
    return serve.run(app, name=name, route_prefix="/")


def wait_forever(poll_s: float = 1.0) -> None:
    """Block until interrupted (KeyboardInterrupt: Ctrl-C, or SIGTERM turned into one by the caller)."""
    while True:
        time.sleep(poll_s)


def stop() -> None:
    """Shut Serve down (its proxy and replicas); a no-op when it is not running."""
    try:
        serve.shutdown()
    except Exception as exc:  # best effort at exit
        logger.warning("serve.shutdown failed: %s", exc)
