"""A process that ends without closing its SQLite store still exits.

aiosqlite runs each connection on a thread that (from 0.22 on) the
interpreter waits for at exit: unless the store makes it a daemon, a script
or server that crashes before closing the store hangs forever. What the
process wrote before it ended stays in the file.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

from axess.stores import SQLiteStore
from axess.stores.base import SessionRecord

KEY = "ab" * 32


def test_a_process_that_never_closes_its_store_exits_and_keeps_its_writes(
    tmp_path: Path,
) -> None:
    db = tmp_path / "crash.db"
    script = textwrap.dedent(
        f"""
        import asyncio
        from axess.stores import SQLiteStore
        from axess.stores.base import SessionRecord

        async def main():
            store = SQLiteStore({str(db)!r})
            await store.open()
            record = SessionRecord({KEY!r}, b"sealed", expires_at=2e9, created_at=1e9)
            assert await store.create_session(record)
            raise SystemExit(3)  # a crash: the store is never closed

        asyncio.run(main())
        """
    )
    # The timeout only stops a hung child (the bug this guards against).
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=60)
    assert done.returncode == 3, done.stderr.decode()[-2000:]
    assert sqlite_row(db) == SessionRecord(KEY, b"sealed", expires_at=2e9, created_at=1e9)


def sqlite_row(db: Path) -> SessionRecord | None:
    import asyncio

    async def load() -> SessionRecord | None:
        store = SQLiteStore(str(db))
        await store.open()
        try:
            return await store.load_session(KEY, 1.5e9)
        finally:
            await store.close()

    return asyncio.run(load())
