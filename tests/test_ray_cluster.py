"""Joining a real Ray cluster with token authentication, as the README tells a user to.

A head started with ``ray start --head`` and ``RAY_AUTH_MODE=token`` (its own process group, loopback, a
private HOME and temp dir, killed by its group id after the test); the join goes through
``recsys.distributed.init_ray`` (the ``--ray-address`` path of ``recsys evaluate`` / ``recsys serve``) in a fresh
process with ``RAY_AUTH_MODE=token`` and ``RAY_AUTH_TOKEN`` set, and runs shards on the cluster.

The refusal without the token is not tested here: Ray retries the connection for about 20 s before it gives
up with ``AuthenticationError`` / ``ConnectionError`` (measured), which would more than double this test's time.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

import pytest

pytestmark = [pytest.mark.ray, pytest.mark.slow]
pytest.importorskip("ray")

JOIN = """
import sys
from recsys.configlib import RayConfig
from recsys.distributed import init_ray, map_shards, shutdown
init_ray(RayConfig(address=sys.argv[1]))
print("RESULT", map_shards(lambda x: x * x, [1, 2, 3], backend="ray"))
shutdown()
"""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.timeout(120)
def test_join_a_token_authenticated_cluster(tmp_path):
    ray_bin = os.path.join(os.path.dirname(sys.executable), "ray")
    token = secrets.token_hex(16)
    port = _free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    head_env = {**base, "HOME": str(tmp_path / "head"), "RAY_USAGE_STATS_ENABLED": "0",
                "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token}
    log = tmp_path / "head.log"
    ray_tmp = tempfile.mkdtemp(prefix="rt-")  # short: Ray's socket paths must fit in 107 bytes
    head = subprocess.Popen([ray_bin, "start", "--head", "--block", f"--port={port}", "--num-cpus=1",
                             "--node-ip-address=127.0.0.1", "--include-dashboard=false",
                             f"--temp-dir={ray_tmp}"],
                            env=head_env, stdout=open(log, "w"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        t0 = time.monotonic()
        while "Ray runtime started" not in log.read_text():
            assert head.poll() is None, log.read_text()
            assert time.monotonic() - t0 < 60, "the Ray head did not start"
            time.sleep(0.2)
        env = {**base, "HOME": str(tmp_path / "user"), "RAY_USAGE_STATS_ENABLED": "0",
               "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
               "PYTHONPATH": os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")])}
        out = subprocess.run([sys.executable, "-c", JOIN, f"127.0.0.1:{port}"], env=env, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "RESULT [1, 4, 9]" in out.stdout
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(head.pid, signal.SIGKILL)  # the head and the daemons it started (its process group)
        head.wait(timeout=20)
        shutil.rmtree(ray_tmp, ignore_errors=True)
