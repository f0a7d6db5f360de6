"""Throughput of ``axess rotate-envelope``: rows re-sealed per second.

    .venv/bin/python -m benchmarks.rotate                     # SQLite, 100 000 sessions
    .venv/bin/python -m benchmarks.rotate --postgres DSN      # also PostgreSQL
    .venv/bin/python -m benchmarks.rotate --rows 10000 --batch 500

Seeds N live sessions sealed under an old envelope key (bulk inserts, not
timed), then runs the same code as the command (:func:`axess.cli.rotate_envelope`)
with a new active key and prints rows/s. PostgreSQL runs in a throw-away schema.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import tempfile
import time

from axess.cli import rotate_envelope
from axess.keys import Key, Keyring
from axess.session.envelope import SessionCrypto
from axess.stores.sql import PostgresStore, SQLiteStore, SQLStore
from axess.stores.sql.params import placeholders

SEED_CHUNK = 500


def rings() -> tuple[Keyring, Keyring]:
    def ring(envelope: list[Key], others: dict[str, list[Key]]) -> Keyring:
        return Keyring(envelope=envelope, **others)  # type: ignore[arg-type]

    others = {p: [Key.generate(p[0] + "1")] for p in ("signing", "fingerprint", "csrf", "device")}
    old = Key.generate("e-old")
    return ring([old], others), ring([Key.generate("e-new"), old], others)


async def seed(store: SQLStore, old: Keyring, rows: int) -> None:
    crypto = SessionCrypto(old)
    now_ms = int(time.time() * 1000)
    payload = b"x" * 200  # a typical small session
    for start in range(0, rows, SEED_CHUNK):
        values: list[object] = []
        n = min(SEED_CHUNK, rows - start)
        for _ in range(n):
            key = secrets.token_hex(32)
            values += [key, crypto.seal(payload, key), None, None, now_ms, now_ms + 86_400_000]
        sql = placeholders(
            "INSERT INTO axess_sessions (skey, payload, user_id, tenant_id, created_at, "
            "expires_at) VALUES " + ", ".join(["(?, ?, ?, ?, ?, ?)"] * n),
            store._dialect.paramstyle,
        )

        async def body(conn: object, sql: str = sql, values: list[object] = values) -> None:
            await conn.run(sql, values)  # type: ignore[attr-defined]

        await store._op("seed", body)


async def bench(name: str, store: SQLStore, rows: int, batch: int) -> float:
    old, new = rings()
    await store.open()
    try:
        await seed(store, old, rows)
        report = await rotate_envelope(store, new, batch=batch, targets=("sessions",))
    finally:
        await store.close()
    counts = report.counts["sessions"]
    assert counts.resealed == rows, counts
    print(
        f"{name:10} {rows} sessions, batch {batch}: {report.seconds:.2f}s, "
        f"{report.rate:,.0f} rows/s"
    )
    return report.rate


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000)
    parser.add_argument("--postgres", metavar="DSN", default=os.environ.get("AXESS_BENCH_PG"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        await bench("sqlite", SQLiteStore(os.path.join(tmp, "r.db")), args.rows, args.batch)
    if args.postgres:
        import asyncpg

        schema = "axess_bench_" + secrets.token_hex(4)
        try:
            store = PostgresStore(args.postgres, schema=schema, auto_migrate=True)
            await bench("postgres", store, args.rows, args.batch)
        finally:
            con = await asyncpg.connect(args.postgres)
            await con.execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')
            await con.close()


if __name__ == "__main__":
    asyncio.run(main())
