"""The SQL that differs between databases comes from the store's
``Dialect``, never from a table by dialect name: a dialect cannot be built
without the fragments the lockout and identity substores use (so no dialect
is ever given another database's statements), and a fourth dialect that
supplies them runs every substore (book: Storage, "Adding a SQL dialect")."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from axess.stores.sql import SQLiteStore
from axess.stores.sql.engine import Dialect
from axess.testing.contract import NOW, make_lever, make_record


@pytest.fixture
async def fourth(sqlite_path: Path) -> AsyncIterator[SQLiteStore]:
    """SQLite's store under a dialect name no module knows: a fourth dialect
    that supplies SQLite's fragments."""
    store = SQLiteStore(sqlite_path)
    await store.open()
    store._dialect = dataclasses.replace(store._dialect, name="fourth")
    store.name = "fourth"
    yield store
    await store.close()


LEVER = make_lever("u:x")

CALLS: dict[str, Callable[[Any], Awaitable[object]]] = {
    "lockout_failure": lambda s: s.lockout_failure([LEVER], None, NOW),
    "lockout_reserve": lambda s: s.lockout_reserve([LEVER], "o:x", NOW),
    "lockout_success": lambda s: s.lockout_success(["u:x"], "o:x", NOW + 60, NOW),
    "purge_expired_lockouts": lambda s: s.purge_expired_lockouts(NOW),
    "set_password_hash": lambda s: s.set_password_hash("u1", "$phc"),
    "enable_totp": lambda s: s.enable_totp("u1", b"\x01sealed", 7),
    "rotate_tenant_pepper": lambda s: s.rotate_tenant_pepper("t1"),
}


def test_a_dialect_without_the_fragments_cannot_be_built() -> None:
    with pytest.raises(TypeError, match=r"ignore_duplicate.*upsert_column.*row_lock.*int_param"):
        Dialect(  # type: ignore[call-arg]
            name="fifth",
            paramstyle="qmark",
            insert_suffix="",
            begin="BEGIN",
            begin_strict=None,
            table_exists="SELECT 1",
        )


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_a_fourth_dialect_runs_the_lockout_and_identity_sql(
    fourth: SQLiteStore, call: Callable[[Any], Awaitable[object]]
) -> None:
    await call(fourth)  # its own fragments, whatever its name


async def test_dialect_neutral_statements_still_run(fourth: SQLiteStore) -> None:
    # Sessions and plain reads are written once for every database.
    rec = make_record("s")
    assert await fourth.create_session(rec)
    assert await fourth.load_session(rec.key, NOW) is not None
    assert await fourth.lockout_state("u:x", NOW) is None
    assert await fourth.get_factors("u1") is not None
