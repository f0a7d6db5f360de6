"""Requests per second under a real server: ``python -m benchmarks.server``.

(The targets are in the book's Internals chapter.)

Each variant of the in-process benchmark (bare Starlette, Starlette's
``SessionMiddleware``, starsessions, axess with the memory store and the full
stack) runs in its own uvicorn process (one worker) on 127.0.0.1, under
each server configuration of :data:`SERVERS` in turn (``--server`` picks
some). The benchmark logs in once per variant, checks that the
read-only ``GET /`` answers the user id, then drives it with ``wrk`` (one
thread, ``--connections`` keep-alive connections, the cookies and
User-Agent of that login; bare Starlette is sent the full axess row's, so
the anchor parses the same request bytes). Rounds are interleaved across
variants so drift hits all rows alike; the best round is reported.

The servers are pinned to one CPU and wrk to the others (Linux, two or
more CPUs), so the load generator never runs on the server's core. Left
to the scheduler on a 2-core machine, the two were placed differently from
run to run and the same build measured anywhere from 0.66 to 0.83 of bare.

Target: axess at least 0.85 of bare Starlette's requests/s (anchors at the
reference: SessionMiddleware 0.79, starsessions 0.60). The ratio depends
on what the server itself costs per request: the leaner the server, the
larger any middleware looms. So the run covers three configurations, from
the leanest (httptools, no access log) to what ``pip install uvicorn``
runs by default (h11, access log on), and prints each one's anchors beside
the reference's, to show which configuration the target is comparable
with. Also reported: the
server's own CPU time per request, steadier than requests/s when server
and wrk share two cores. Needs ``wrk``
(Debian: ``apt install wrk``); without it the run says so and exits 2.

``--serve NAME --port N`` is the child side (not for direct use).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.routing import Route

from benchmarks.variants import (
    USER,
    _axess_app,
    _session_app,
    login_starlette,
    read_starlette,
)

UA = "Mozilla/5.0 (X11; Linux x86_64; rv:128.0) Gecko/20100101 Firefox/128.0"
TARGET = 0.85
X = "\u00d7"
REFERENCE = {"Starlette SessionMiddleware": 0.79, "starsessions (memory)": 0.60}
#: Printed name -> (child app name, expected body of GET /).
VARIANTS: dict[str, tuple[str, bytes]] = {
    "bare Starlette": ("bare", b"ok"),
    "Starlette SessionMiddleware": ("starlette", USER.encode()),
    "starsessions (memory)": ("starsessions", USER.encode()),
    "axess memory, session only": ("axess-session", USER.encode()),
    "axess memory (full stack)": ("axess", USER.encode()),
    "axess SQLite (full stack)": ("axess-sqlite", USER.encode()),
}
ANCHOR = "bare Starlette"
AXESS = "axess memory (full stack)"


@dataclass(frozen=True)
class Server:
    """One uvicorn configuration: its HTTP parser and whether it logs each request."""

    http: str
    access_log: bool
    about: str


#: ``--server`` name -> configuration, leanest first.
SERVERS: dict[str, Server] = {
    "lean": Server("httptools", False, "httptools, no access log"),
    "standard": Server("httptools", True, "httptools, access log (uvicorn[standard]'s default)"),
    "plain": Server("h11", True, "h11, access log (`pip install uvicorn`'s default)"),
}


# -- child: one app under uvicorn -------------------------------------------------------
def build(name: str) -> Starlette:
    if name == "bare":
        from benchmarks.variants import ok

        return _session_app(ok, login_starlette)
    if name == "starlette":
        from starlette.middleware.sessions import SessionMiddleware

        app = _session_app(read_starlette, login_starlette)
        app.add_middleware(SessionMiddleware, secret_key=os.urandom(32).hex(), https_only=False)
        return app
    if name == "starsessions":
        from starsessions import InMemoryStore, SessionAutoloadMiddleware, SessionMiddleware

        app = _session_app(read_starlette, login_starlette)
        app.add_middleware(SessionAutoloadMiddleware)
        app.add_middleware(
            SessionMiddleware, store=InMemoryStore(), lifetime=3600, cookie_https_only=False
        )
        return app
    if name in ("axess", "axess-session"):
        from axess import BindingPolicy, Keyring, SessionConfig
        from axess.session.csrf import CSRFConfig
        from axess.stores import MemoryStore

        # Plain HTTP on loopback: cookies without Secure, or the client would
        # not send them back. Everything else is the default full stack.
        if name == "axess-session":  # the foundation's scenario: binding and CSRF off
            options: dict[str, object] = {"binding": BindingPolicy(enabled=False), "csrf": False}
        else:
            options = {"csrf": CSRFConfig(secure=False)}
        return _axess_app(
            MemoryStore(), Keyring.generate(), session=SessionConfig(secure=False), **options
        )
    if name == "axess-sqlite":  # the embedded default, in a throwaway file
        from axess import Axess, Keyring, SessionConfig
        from axess.session.csrf import CSRFConfig
        from axess.stores import SQLiteStore
        from benchmarks.variants import LOGIN_LIMIT, login_axess, read_axess

        path = os.path.join(tempfile.mkdtemp(prefix="axess-bench-"), "bench.db")
        auth = Axess(
            store=SQLiteStore(path),
            keys=Keyring.generate(),
            session=SessionConfig(secure=False),
            csrf=CSRFConfig(secure=False),
            rate_limits=[LOGIN_LIMIT],
            debug=True,
            cleanup_interval=None,
        )
        app = Starlette(
            routes=[Route("/", read_axess), Route("/login", login_axess, methods=["POST"])],
            lifespan=auth.lifespan,  # opens (and migrates) the store
        )
        auth.install(app)
        return app
    raise SystemExit(f"unknown app {name!r}")


def serve(
    name: str, port: int, server: Server, cpu: int | None = None, limit: int | None = None
) -> None:
    import copy
    import logging

    from uvicorn.config import LOGGING_CONFIG

    if cpu is not None:
        os.sched_setaffinity(0, {cpu})

    logging.getLogger("axess").setLevel(logging.ERROR)  # dev-key and plain-HTTP warnings
    # uvicorn's own logging set-up, as a deployment has it, but quiet apart
    # from the access log (which goes to stdout: the parent discards it).
    log_config = copy.deepcopy(LOGGING_CONFIG)
    log_config["loggers"]["uvicorn.error"]["level"] = "WARNING"
    log_config["loggers"]["uvicorn.access"]["level"] = "INFO"
    uvicorn.run(
        build(name),
        host="127.0.0.1",
        port=port,
        http=server.http,
        log_config=log_config,
        log_level=None,
        access_log=server.access_log,
        lifespan="on" if name == "axess-sqlite" else "off",
        limit_max_requests=limit,  # (--instructions: exit after that many)
    )


# -- parent: drive the children with wrk --------------------------------------------------
@dataclass
class Row:
    name: str
    port: int
    process: subprocess.Popen[bytes]
    headers: list[str] = field(default_factory=list)
    rates: list[float] = field(default_factory=list)
    #: Server CPU seconds per request, one per round.
    cpu: list[float] = field(default_factory=list)
    note: str = ""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_split() -> tuple[int | None, set[int] | None]:
    """(the CPU for the servers, the CPUs for wrk); ``(None, None)`` when
    the process cannot be pinned (not Linux, or a single CPU)."""
    if not hasattr(os, "sched_getaffinity"):
        return None, None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return cpus[0], set(cpus[1:])


def start(
    name: str,
    server: str,
    cpu: int | None,
    *,
    limit: int | None = None,
    under: Sequence[str] = (),
    stderr: int | None = None,
) -> Row:
    """Start ``name``'s server (under the ``under`` command, if any) and wait
    until it listens."""
    port = free_port()
    app_name = VARIANTS[name][0]
    cmd = [*under, sys.executable, "-m", "benchmarks.server", "--serve", app_name]
    cmd += ["--port", str(port), "--server", server]
    if cpu is not None:
        cmd += ["--cpu", str(cpu)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    # stdout: the access log, discarded.
    process = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr)
    deadline = time.monotonic() + (300 if under else 20)
    while time.monotonic() < deadline:  # a child process: polling is the only way
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return Row(name, port, process)
        except OSError:
            if process.poll() is not None:
                raise SystemExit(f"{name}: server exited ({process.returncode})") from None
            time.sleep(0.05)
    process.kill()
    raise SystemExit(f"{name}: server did not start")


async def login(row: Row) -> None:
    """Sign in once; keep the cookies and User-Agent for wrk; check the answer."""
    base = f"http://127.0.0.1:{row.port}"
    async with httpx.AsyncClient(base_url=base, headers={"user-agent": UA}) as c:
        if row.name != ANCHOR:
            r = await c.post("/login")
            if r.status_code != 200:
                raise SystemExit(f"{row.name}: login answered {r.status_code}")
        r = await c.get("/")
        expected = VARIANTS[row.name][1]
        if r.status_code != 200 or r.content != expected:
            raise SystemExit(f"{row.name}: GET / answered {r.status_code} {r.content[:60]!r}")
        if "set-cookie" in r.headers:
            row.note = "sends Set-Cookie on the read-only request"
        cookie = "; ".join(f"{k}={v}" for k, v in c.cookies.items())
    row.headers = [f"User-Agent: {UA}"] + ([f"Cookie: {cookie}"] if cookie else [])


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def wrk(row: Row, seconds: float, connections: int) -> tuple[float, float]:
    """Requests/s, and the server's CPU seconds per request, over one wrk run."""
    cmd = ["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s"]
    for h in row.headers:
        cmd += ["-H", h]
    before = cpu_seconds(row.process.pid)
    out = subprocess.run(
        [*cmd, f"http://127.0.0.1:{row.port}/"], capture_output=True, text=True, check=True
    ).stdout
    used = cpu_seconds(row.process.pid) - before
    if re.search(r"Non-2xx or 3xx responses", out):
        raise SystemExit(f"{row.name}: wrk saw error responses:\n{out}")
    rate = re.search(r"Requests/sec:\s+([\d.]+)", out)
    total = re.search(r"(\d+) requests in", out)
    if rate is None or total is None:
        raise SystemExit(f"{row.name}: cannot read wrk's output:\n{out}")
    return float(rate.group(1)), used / max(int(total.group(1)), 1)


def report(server: str, rows: list[Row]) -> tuple[list[str], str]:
    """The configuration's table, and its line of the summary."""
    best = {r.name: max(r.rates) for r in rows}
    cpu = {r.name: min(r.cpu) * 1e6 for r in rows}
    anchor, anchor_cpu = best[ANCHOR], cpu[ANCHOR]
    out = [
        f"### {server}: {SERVERS[server].about}",
        "",
        "| variant | requests/s | ratio to bare | server CPU µs/request | µs over bare | notes |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for r in rows:
        note = r.note or ("anchor" if r.name == ANCHOR else "")
        out.append(
            f"| {r.name} | {best[r.name]:,.0f} | {best[r.name] / anchor:.2f}{X} "
            f"| {cpu[r.name]:.1f} | {cpu[r.name] - anchor_cpu:+.1f} | {note} |"
        )
    ratio = best[AXESS] / anchor
    by_cpu = anchor_cpu / cpu[AXESS]
    verdict = "met" if max(ratio, by_cpu) >= TARGET else "MISSED"
    anchors = " | ".join(f"{best[k] / anchor:.2f}{X}" for k in REFERENCE)
    axess = f"{ratio:.2f}{X} ({by_cpu:.2f}{X})"
    line = f"| {server} | {anchor_cpu:.0f} | {anchors} | {axess} | {verdict} |"
    return [*out, ""], line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0, help="per round (default 5)")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds (default 5)")
    parser.add_argument("--connections", type=int, default=16, help="wrk connections")
    parser.add_argument(
        "--server",
        default=",".join(SERVERS),
        help=f"server configurations, comma-separated (default: all of {', '.join(SERVERS)})",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument(
        "--instructions",
        action="store_true",
        help="count instructions per request in the server under callgrind (needs valgrind)",
    )
    parser.add_argument("--cpu", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--limit", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    servers = [name.strip() for name in args.server.split(",") if name.strip()]
    unknown = [name for name in servers if name not in SERVERS]
    if unknown or not servers:
        parser.error(f"--server: choose from {', '.join(SERVERS)} (got {args.server!r})")
    if args.serve:
        serve(args.serve, args.port, SERVERS[servers[0]], args.cpu, args.limit)
        return 0
    if args.instructions:
        return count_instructions(servers)
    if shutil.which("wrk") is None:
        print("wrk not found: install it (Debian: apt install wrk) to run this benchmark")
        return 2
    server_cpu, client_cpus = cpu_split()
    args.pinned = server_cpu is not None
    if client_cpus is not None:
        os.sched_setaffinity(0, client_cpus)  # wrk inherits it; the servers re-pin
    out = [
        "## Read-only request with a session cookie under uvicorn + wrk",
        "",
        f"Python {platform.python_version()}, uvicorn {uvicorn.__version__} (1 worker), "
        f"wrk -t1 -c{args.connections}, best of {args.rounds} {X} {args.seconds:g} s; "
        f"{os.cpu_count()} CPU cores; "
        + (
            "servers pinned to one, wrk to the others"
            if args.pinned
            else "not pinned (server and wrk compete for the cores)"
        )
        + ". The server's own CPU time per request is the steadier figure.",
        "",
    ]
    summary = [
        "| server | bare: server CPU µs/request | "
        + " | ".join(REFERENCE)
        + f" | axess full stack (by server CPU) | target ≥ {TARGET}{X} |",
        "|---|---:|" + "---:|" * len(REFERENCE) + "---:|---|",
        "| reference | | " + " | ".join(f"{v:.2f}{X}" for v in REFERENCE.values()) + " | | |",
    ]
    for server in servers:
        table, line = report(server, measure(server, server_cpu, args))
        out += table
        summary.append(line)
    print("\n".join(out + summary))
    return 0


def measure(server: str, server_cpu: int | None, args: argparse.Namespace) -> list[Row]:
    """Every variant under one server configuration, ``args.rounds`` interleaved rounds."""
    rows: list[Row] = []
    try:
        for name in VARIANTS:
            rows.append(start(name, server, server_cpu))
        for row in rows:
            asyncio.run(login(row))
        anchor = next(r for r in rows if r.name == ANCHOR)
        anchor.headers = next(r for r in rows if r.name == AXESS).headers
        for row in rows:
            wrk(row, 1, args.connections)  # warm-up
        for _ in range(args.rounds):
            for row in rows:
                rate, cpu = wrk(row, args.seconds, args.connections)
                row.rates.append(rate)
                row.cpu.append(cpu)
    finally:
        for row in rows:
            row.process.terminate()
        for row in rows:
            row.process.wait(timeout=10)
    return rows


# -- --instructions: the same requests, counted under callgrind ------------------------------
#: Requests per server under callgrind: the small run and how many more the large one has.
SMALL, DELTA = 200, 2000


def drive(row: Row, n: int) -> None:
    """Send ``n`` keep-alive requests, one at a time, on one connection, as
    wrk sends them; each must answer the variant's body."""
    lines = ["GET / HTTP/1.1", f"Host: 127.0.0.1:{row.port}", *row.headers, "", ""]
    request = "\r\n".join(lines).encode("latin-1")
    expected = VARIANTS[row.name][1]
    with socket.create_connection(("127.0.0.1", row.port), timeout=120) as sock:
        pending = b""
        for _ in range(n):
            sock.sendall(request)
            while b"\r\n\r\n" not in pending:
                pending += sock.recv(65536) or b"!"  # (closed: fails the check below)
            head, _, pending = pending.partition(b"\r\n\r\n")
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))  # type: ignore[union-attr]
            while len(pending) < length:
                pending += sock.recv(65536) or b"!"
            body, pending = pending[:length], pending[length:]
            if not head.startswith(b"HTTP/1.1 200") or body != expected:
                raise SystemExit(f"{row.name}: unexpected answer {head[:40]!r} {body[:40]!r}")


def collected(name: str, server: str, n: int) -> int:
    """Instructions the server process ran, from start to exit, serving the
    login and ``n`` read-only requests."""
    logins = 1 if name == ANCHOR else 2  # login(): [POST /login,] GET /
    under = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    row = start(name, server, None, limit=logins + n, under=under, stderr=subprocess.PIPE)
    try:
        asyncio.run(login(row))
        if name == ANCHOR:  # the same request bytes as the axess row (see main)
            row.headers = [f"User-Agent: {UA}", "Cookie: " + axess_cookies()]
        drive(row, n)
        _, err = row.process.communicate(timeout=300)  # it exits at the limit
    finally:
        row.process.kill()
    match = re.search(rb"Collected : (\d+)", err or b"")
    if match is None:
        raise SystemExit(f"{name}: no callgrind total:\n{(err or b'')[-800:].decode()}")
    return int(match.group(1))


def axess_cookies() -> str:
    """Cookies of the full axess row's login (from an in-process twin: the
    same format and length, signed with another key), for bare Starlette."""
    from axess import SessionConfig
    from benchmarks.asgi import Client
    from benchmarks.variants import _login

    name = SessionConfig(secure=False).resolved_cookie_name  # build("axess"): plain HTTP
    scope = asyncio.run(_login(build("axess"), Client(user_agent=UA), name))
    return dict(scope["headers"])[b"cookie"].decode("latin-1")


def count_instructions(servers: list[str]) -> int:
    """Print instructions per read-only request in the server process, per
    configuration and variant: ``(large - small) / DELTA``, so start-up,
    the login and shutdown cancel out. Deterministic, unlike requests/s."""
    if shutil.which("valgrind") is None:
        print("valgrind not found: install it to count instructions")
        return 2
    names = [n for n in VARIANTS if n != "axess SQLite (full stack)"]  # (its thread: noisy)
    jobs = [(server, name, n) for server in servers for name in names for n in (0, DELTA)]
    with ThreadPoolExecutor(max(1, (os.cpu_count() or 2))) as pool:
        totals = dict(
            zip(
                jobs,
                pool.map(lambda job: collected(job[1], job[0], SMALL + job[2]), jobs),
                strict=True,
            )
        )
    print("## Instructions per read-only request in the uvicorn process (callgrind)")
    print()
    print("| server | " + " | ".join(names) + " |")
    print("|---|" + "---:|" * len(names))
    for server in servers:
        per = {n: (totals[(server, n, DELTA)] - totals[(server, n, 0)]) / DELTA for n in names}
        cells = [f"{per[n] / 1000:.1f}k ({per[ANCHOR] / per[n]:.2f}{X})" for n in names]
        print(f"| {server} | " + " | ".join(cells) + " |")
    print()
    print("(in brackets: bare Starlette's count over the row's, the requests/s ratio if")
    print("every instruction cost the same; the kernel's share of a request is not counted)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
