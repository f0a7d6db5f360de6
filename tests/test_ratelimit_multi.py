"""Multi-instance: two real uvicorn processes on 127.0.0.1, one client
alternating between them. With a shared Valkey bucket store the combined
allowed count honours the limit (one bucket); with memory stores every
instance has its own bucket, so the client gets it twice."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fixtures_valkey import ValkeyTarget, free_port

ROOT = Path(__file__).resolve().parent.parent
LIMIT = 5

SERVER = r"""
import os

import uvicorn
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from axess.net import ClientIPMiddleware
from axess.ratelimit import MemoryBucketStore, RateLimit, RateLimitMiddleware, ValkeyBucketStore
from axess.stack import Stack


async def home(request):
    return PlainTextResponse(os.environ["RL_INSTANCE"])


url = os.environ.get("RL_VALKEY_URL")
if url:
    store = ValkeyBucketStore(url, prefix=os.environ["RL_PREFIX"], allow_insecure=True)
else:
    store = MemoryBucketStore()
app = Stack(
    Starlette(routes=[Route("/", home), Route("/healthz", home)]),
    [
        ClientIPMiddleware(None),
        RateLimitMiddleware(
            None, rules=[RateLimit(os.environ["RL_LIMIT"], name="multi")], store=store
        ),
    ],
)
uvicorn.run(app, host="127.0.0.1", port=int(os.environ["RL_PORT"]), log_level="warning")
"""


def start_instances(
    count: int, extra_env: dict[str, str]
) -> tuple[list[subprocess.Popen[bytes]], list[int]]:
    procs: list[subprocess.Popen[bytes]] = []
    ports: list[int] = []
    env = {k: v for k, v in os.environ.items() if k not in ("WEB_CONCURRENCY", "UVICORN_WORKERS")}
    for i in range(count):
        port = free_port()
        proc_env = {
            **env,
            **extra_env,
            "RL_PORT": str(port),
            "RL_INSTANCE": f"instance-{i}",
            "RL_LIMIT": f"{LIMIT}/hour",
        }
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", SERVER],
                cwd=ROOT,
                env=proc_env,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
        ports.append(port)
    return procs, ports


def wait_ready(
    procs: list[subprocess.Popen[bytes]], ports: list[int], timeout: float = 30.0
) -> None:
    deadline = time.monotonic() + timeout
    for proc, port in zip(procs, ports, strict=True):
        while True:
            if proc.poll() is not None:
                err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
                pytest.fail(f"uvicorn instance exited early:\n{err[-2000:]}")
            try:
                if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"uvicorn instance on port {port} did not start in {timeout:g}s")
            time.sleep(0.1)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        if proc.stderr:
            proc.stderr.close()


def alternate(ports: list[int], requests: int) -> list[str]:
    """Send ``requests`` GETs round-robin; the instance name of each allowed one."""
    allowed: list[str] = []
    with httpx.Client(timeout=10.0) as http:
        for i in range(requests):
            r = http.get(f"http://127.0.0.1:{ports[i % len(ports)]}/")
            assert r.status_code in (200, 429), r.status_code
            if r.status_code == 200:
                allowed.append(r.text)
    return allowed


@pytest.fixture
def instances(request: pytest.FixtureRequest) -> Iterator[list[int]]:
    """Two uvicorn processes; ``"valkey"`` shares the test server's buckets."""
    env: dict[str, str] = {}
    if request.param == "valkey":
        target: ValkeyTarget = request.getfixturevalue("valkey_target")
        env = {"RL_VALKEY_URL": target.url, "RL_PREFIX": request.getfixturevalue("valkey_prefix")}
    procs, ports = start_instances(2, env)
    try:
        wait_ready(procs, ports)
        yield ports
    finally:
        stop(procs)


@pytest.mark.timeout(90)
@pytest.mark.parametrize("instances", ["valkey"], indirect=True)
def test_shared_valkey_buckets_hold_the_limit_across_instances(instances: list[int]) -> None:
    allowed = alternate(instances, 4 * LIMIT)
    assert len(allowed) == LIMIT
    assert set(allowed) == {"instance-0", "instance-1"}  # both served, one bucket


@pytest.mark.timeout(90)
@pytest.mark.parametrize("instances", ["memory"], indirect=True)
def test_memory_buckets_double_the_limit_across_instances(instances: list[int]) -> None:
    allowed = alternate(instances, 4 * LIMIT)
    assert len(allowed) == 2 * LIMIT
    assert allowed.count("instance-0") == allowed.count("instance-1") == LIMIT
