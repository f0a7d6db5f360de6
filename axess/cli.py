"""The ``axess`` command: ``keygen``, ``migrate`` and ``purge``.

Stores are named by URL: ``sqlite:///path/to/axess.db`` (or a plain path
ending in ``.db``), ``postgresql://user@host/db`` and ``mysql://user@host/db``.
The URL may also come from ``AXESS_STORE_URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from typing import Any, TextIO

from axess.errors import AxessError
from axess.keys import PURPOSES, Key, Keyring
from axess.stores.sql.engine import SQLStore, redact_dsn


def store_from_url(url: str) -> SQLStore:
    """An SQL store for ``url``. Raises ValueError for an unsupported scheme."""
    from axess.stores.sql import MySQLStore, PostgresStore, SQLiteStore

    if url.startswith("sqlite:///"):
        return SQLiteStore(url[len("sqlite:///") :], auto_migrate=False)
    if url.startswith(("postgresql://", "postgres://")):
        return PostgresStore(url)
    if url.startswith("mysql://"):
        return MySQLStore(url)
    if "://" not in url and url.endswith((".db", ".sqlite", ".sqlite3")):
        return SQLiteStore(url, auto_migrate=False)
    raise ValueError(
        f"unsupported store URL {redact_dsn(url)!r}: use sqlite:///path, postgresql://… or mysql://…"
    )


def keygen(out: TextIO) -> None:
    """Print fresh keys for every purpose as environment lines."""
    stamp = time.strftime("%Y%m%d", time.gmtime())
    keys = {p: [Key.generate(f"{p[0]}{stamp}-{secrets.token_hex(2)}")] for p in PURPOSES}
    ring = Keyring(**keys)  # type: ignore[arg-type]
    out.write("# axess keys generated " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()) + "\n")
    out.write(
        "# Keep these secret. To rotate, put a new key FIRST and keep the old one after it.\n"
    )
    for line in ring.env_lines():
        out.write(line + "\n")


async def _migrate(url: str, out: TextIO) -> int:
    store = store_from_url(url)
    try:
        before = await store.schema_version()
        after = await store.migrate()
    finally:
        await store.close()
    if after == before:
        out.write(f"schema is up to date (version {after})\n")
    else:
        out.write(f"migrated schema from version {before} to {after}\n")
    return 0


async def _purge(url: str, only: list[str] | None, seconds: float, out: TextIO) -> int:
    store = store_from_url(url)
    try:
        await store.open()
        async with asyncio.timeout(seconds):
            counts = await store.purge_expired(time.time(), only=only)
    finally:
        await store.close()
    for target, count in counts.items():
        out.write(f"{target}: {count} expired row(s) deleted\n")
    return 0


async def _run_cancellable(coro: Coroutine[Any, Any, int]) -> int:
    """Run ``coro`` and cancel it on SIGINT/SIGTERM (exit status 130)."""
    task = asyncio.ensure_future(coro)
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, task.cancel)
        except (NotImplementedError, RuntimeError):  # pragma: no cover - platform
            pass
    try:
        return await task
    except asyncio.CancelledError:
        print("axess: interrupted", file=sys.stderr)
        return 130


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="axess", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("keygen", help="print fresh keys for every purpose (env lines)")
    for name, help_text in (
        ("migrate", "apply pending schema migrations (forward-only, idempotent)"),
        ("purge", "delete expired rows"),
    ):
        p = sub.add_parser(name, help=help_text)
        p.add_argument("--store", default=os.environ.get("AXESS_STORE_URL"), help="store URL")
        if name == "purge":
            p.add_argument("--only", help="comma-separated targets (default: all)")
            p.add_argument("--timeout", type=float, default=300.0, help="seconds (default 300)")
    args = parser.parse_args(argv)
    if args.command == "keygen":
        keygen(sys.stdout)
        return 0
    if not args.store:
        parser.error("--store (or AXESS_STORE_URL) is required")
    try:
        if args.command == "migrate":
            return asyncio.run(_run_cancellable(_migrate(args.store, sys.stdout)))
        only = [t.strip() for t in args.only.split(",") if t.strip()] if args.only else None
        return asyncio.run(_run_cancellable(_purge(args.store, only, args.timeout, sys.stdout)))
    except (AxessError, ValueError, TimeoutError) as exc:
        print(f"axess {args.command}: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
