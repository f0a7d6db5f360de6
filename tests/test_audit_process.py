"""The real thing: an app under uvicorn (a subprocess on 127.0.0.1) takes
audited traffic, gets SIGTERM mid-load while its SQL sink is slow, and is
started again. Nothing may be lost: every event the first process emitted is
in the audit table exactly once after the second one replayed the recovery
log. This is the one audit test that waits on wall-clock time."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

TESTS = Path(__file__).parent
DRAIN_TIMEOUT = 1.0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    def __init__(self, tmp: Path, run: int, **env: str) -> None:
        self.port = _free_port()
        self.stats = tmp / f"stats{run}.json"
        self.output = open(tmp / f"uvicorn{run}.log", "wb")
        environment = {
            **os.environ,
            "AUDIT_APP_DB": str(tmp / "audit.db"),
            "AUDIT_APP_RECOVERY": str(tmp / "recovery.jsonl"),
            "AUDIT_APP_STATS": str(self.stats),
            "AUDIT_APP_DRAIN_TIMEOUT": str(DRAIN_TIMEOUT),
            **env,
        }
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "audit_app:app",
                "--app-dir",
                str(TESTS),
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--no-access-log",
                "--log-level",
                "warning",
            ],
            env=environment,
            stdout=self.output,
            stderr=subprocess.STDOUT,
        )
        self.url = f"http://127.0.0.1:{self.port}"

    async def ready(self) -> dict[str, Any]:
        deadline = time.monotonic() + 20
        async with httpx.AsyncClient() as client:
            while True:
                if self.proc.poll() is not None:
                    pytest.fail(f"uvicorn exited early: {self.log()}")
                try:
                    r = await client.get(self.url + "/ready", timeout=1)
                    result: dict[str, Any] = r.json()
                    return result
                except httpx.TransportError:
                    if time.monotonic() > deadline:
                        pytest.fail(f"uvicorn did not come up: {self.log()}")
                    await asyncio.sleep(0.05)

    def terminate(self) -> float:
        """SIGTERM; seconds until the process exited."""
        started = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        return started

    async def exited(self, started: float, limit: float) -> float:
        while self.proc.poll() is None:
            if time.monotonic() - started > limit:
                self.proc.kill()
                pytest.fail(f"uvicorn did not exit within {limit}s: {self.log()}")
            await asyncio.sleep(0.02)
        elapsed = time.monotonic() - started
        # uvicorn re-raises the SIGTERM it handled once shutdown is complete.
        assert self.proc.returncode in (0, -signal.SIGTERM), self.log()
        assert "Traceback" not in self.log()
        return elapsed

    def result(self) -> dict[str, int]:
        data: dict[str, int] = json.loads(self.stats.read_text())
        return data

    def log(self) -> str:
        self.output.flush()
        return Path(self.output.name).read_text(errors="replace")[-3000:]

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.output.close()


async def _load(
    url: str, acked: set[int], stop: asyncio.Event, reached: asyncio.Event, target: int
) -> None:
    counter = iter(range(10**9))

    async def worker(client: httpx.AsyncClient) -> None:
        while not stop.is_set():
            n = next(counter)
            try:
                r = await client.post(url + "/event", params={"n": n}, timeout=5)
            except httpx.TransportError:
                return  # the server is going away
            if r.status_code == 200:
                acked.add(n)
                if len(acked) >= target:
                    reached.set()

    async with httpx.AsyncClient() as client:
        await asyncio.gather(*(worker(client) for _ in range(12)))


@pytest.mark.timeout(120)
async def test_sigterm_mid_load_with_a_slow_sink_loses_nothing(tmp_path: Path) -> None:
    first = Server(tmp_path, 1, AUDIT_APP_SINK_DELAY="0.1", AUDIT_APP_BATCH="10")
    try:
        assert (await first.ready())["replayed"] == 0
        acked: set[int] = set()
        stop, reached = asyncio.Event(), asyncio.Event()
        # 1500 events: far more than the slow sink (100/s) keeps up with.
        load = asyncio.create_task(_load(first.url, acked, stop, reached, 1500))
        await reached.wait()
        started = first.terminate()  # mid-load: the clients keep sending
        shutdown = await first.exited(started, limit=DRAIN_TIMEOUT + 15)
        stop.set()
        await load
    finally:
        first.close()
    run1 = first.result()
    assert run1["emitted"] >= len(acked) >= 1500
    assert run1["recovered"] > 0, "the drain finished: the test did not exercise the recovery log"
    assert run1["emitted"] == run1["delivered"] + run1["recovered"]
    assert run1["dropped"] == 0
    assert shutdown < DRAIN_TIMEOUT + 3  # bounded: the drain gave up after DRAIN_TIMEOUT
    log = tmp_path / "recovery.jsonl"
    assert len(log.read_text().splitlines()) == run1["recovered"]

    second = Server(tmp_path, 2, AUDIT_APP_SINK_DELAY="0", AUDIT_APP_BATCH="200")
    try:
        assert (await second.ready())["replayed"] == run1["recovered"]
        await second.exited(second.terminate(), limit=DRAIN_TIMEOUT + 15)
    finally:
        second.close()
    run2 = second.result()
    assert run2["replayed"] == run2["delivered"] == run1["recovered"]
    assert run2["recovered"] == run2["dropped"] == run2["emitted"] == 0
    assert not log.exists() and not (tmp_path / "recovery.jsonl.replaying").exists()

    con = sqlite3.connect(tmp_path / "audit.db")
    try:
        rows = con.execute("SELECT event_id, extras FROM axess_audit_events").fetchall()
    finally:
        con.close()
    ids = [r[0] for r in rows]
    numbers = {json.loads(r[1])["n"] for r in rows}
    assert len(ids) == len(set(ids)) == run1["emitted"]  # every event, exactly once
    assert acked <= numbers  # every acknowledged request was audited
