"""The identity and factors substores on SQL (mixed into
:class:`~axess.stores.sql.engine.SQLStore`), migration ``0004_identity``.

One implementation for every dialect: inserts use the dialect's
insert-if-absent suffix (MySQL: a duplicate-key error, reported by the
driver's ``is_duplicate``). An insert inside a transaction, where a
duplicate-key error would abort it, takes the dialect's
``ignore_duplicate`` suffix instead. The two races that matter are single
statements, atomic on every database:

* TOTP replay guard: ``UPDATE … SET totp_last_step = ? WHERE user_id = ?
  AND totp_secret IS NOT NULL AND (totp_last_step IS NULL OR
  totp_last_step < ?)`` — of concurrent submissions of one step exactly one
  matches a row;
* recovery code: ``DELETE … WHERE user_id = ? AND code_hash IN (…)`` — of
  concurrent uses of one code exactly one deletes the row.
"""

from __future__ import annotations

import json
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING, Any, Final

from axess.stores.base import (
    FACTORS,
    IDENTITY,
    FactorRecord,
    TenantPepper,
    TenantRecord,
    UserRecord,
)
from axess.stores.sql.params import ms
from axess.stores.sql.part import SQLStorePart

if TYPE_CHECKING:
    from axess.stores.sql.engine import Connection


_TENANT_COLS: Final = (
    "tenant_id, slug, status, pepper, ip_allow, ip_deny, lockout_overrides, created_at"
)
_USER_COLS: Final = "user_id, tenant_id, identifier, status, created_at, last_login_at"


def _dump(value: object) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def _tenant(row: Sequence[Any]) -> TenantRecord:
    return TenantRecord(
        id=str(row[0]),
        slug=str(row[1]),
        status=str(row[2]),
        pepper=None if row[3] is None else bytes(row[3]),
        ip_allow=tuple(json.loads(row[4])),
        ip_deny=tuple(json.loads(row[5])),
        lockout_overrides=dict(json.loads(row[6])),
        created_at=int(row[7]) / 1000,
    )


def _tenant_params(t: TenantRecord) -> tuple[object, ...]:
    return (
        t.id,
        t.slug,
        t.status,
        None if t.pepper is None else bytes(t.pepper),
        _dump(list(t.ip_allow)),
        _dump(list(t.ip_deny)),
        _dump(t.lockout_overrides),
        ms(t.created_at),
    )


def _user(row: Sequence[Any]) -> UserRecord:
    return UserRecord(
        id=str(row[0]),
        tenant_id=str(row[1]),
        identifier=str(row[2]),
        status=str(row[3]),
        created_at=int(row[4]) / 1000,
        last_login_at=None if row[5] is None else int(row[5]) / 1000,
    )


class SQLIdentityMixin(SQLStorePart):
    """Identity and factor methods of :class:`SQLStore` (see the module docstring)."""

    async def _insert_absent(self, what: str, sql: str, args: Sequence[object]) -> bool:
        stmt = self._sql(sql + self._dialect.insert_suffix)

        async def body(conn: Connection) -> bool:
            try:
                return (await conn.run(stmt, args)).rowcount == 1
            except self._driver.errors() as exc:
                if self._driver.is_duplicate(exc):
                    return False
                raise

        return await self._op(what, body, substore=IDENTITY)

    async def _fetch(
        self, what: str, sql: str, args: Sequence[object], substore: str = IDENTITY
    ) -> Sequence[Sequence[Any]]:
        stmt = self._sql(sql)

        async def body(conn: Connection) -> Sequence[Sequence[Any]]:
            return (await conn.run(stmt, args, fetch=True)).rows

        return await self._op(what, body, substore=substore)

    async def _execute(
        self, what: str, sql: str, args: Sequence[object], substore: str = IDENTITY
    ) -> int:
        stmt = self._sql(sql)

        async def body(conn: Connection) -> int:
            return (await conn.run(stmt, args)).rowcount

        return await self._op(what, body, substore=substore)

    # -- tenants --------------------------------------------------------------
    async def create_tenant(self, tenant: TenantRecord) -> bool:
        sql = f"INSERT INTO axess_tenants ({_TENANT_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?)"  # noqa: S608
        return await self._insert_absent("create_tenant", sql, _tenant_params(tenant))

    async def get_tenant(self, tenant_id: str) -> TenantRecord | None:
        sql = f"SELECT {_TENANT_COLS} FROM axess_tenants WHERE tenant_id = ?"  # noqa: S608
        rows = await self._fetch("get_tenant", sql, (tenant_id,))
        return _tenant(rows[0]) if rows else None

    async def get_tenant_by_slug(self, slug: str) -> TenantRecord | None:
        sql = f"SELECT {_TENANT_COLS} FROM axess_tenants WHERE slug = ?"  # noqa: S608
        rows = await self._fetch("get_tenant_by_slug", sql, (slug,))
        return _tenant(rows[0]) if rows else None

    async def update_tenant(self, tenant: TenantRecord) -> bool:
        """Rewrite the tenant's row; ``False`` if it does not exist or the slug
        belongs to another tenant."""
        taken = self._sql("SELECT 1 FROM axess_tenants WHERE slug = ? AND tenant_id <> ?")
        update = self._sql(
            "UPDATE axess_tenants SET slug = ?, status = ?, pepper = ?, ip_allow = ?, "
            "ip_deny = ?, lockout_overrides = ? WHERE tenant_id = ?"
        )
        p = _tenant_params(tenant)

        async def body(conn: Connection) -> bool:
            if (await conn.run(taken, (tenant.slug, tenant.id), fetch=True)).rows:
                return False
            return (await conn.run(update, (*p[1:7], tenant.id))).rowcount == 1

        return await self._op("update_tenant", body, substore=IDENTITY)

    async def tenant_pepper(self, tenant_id: str) -> TenantPepper:
        """One statement: the record's secret and the rotated version, if any."""
        sql = (
            "SELECT (SELECT pepper FROM axess_tenants WHERE tenant_id = ?), "
            "(SELECT version FROM axess_tenant_peppers WHERE tenant_id = ?)"
        )
        row = (await self._fetch("tenant_pepper", sql, (tenant_id, tenant_id)))[0]
        return TenantPepper(
            None if row[0] is None else bytes(row[0]), 1 if row[1] is None else int(row[1])
        )

    async def rotate_tenant_pepper(self, tenant_id: str) -> int:
        """Insert version 1 unless present, increment, read back: one transaction
        (the UPDATE's row lock serializes concurrent rotations)."""
        rows = await self._ensure_then(
            "rotate_tenant_pepper",
            ("axess_tenant_peppers", "tenant_id, version", (tenant_id, 1)),
            [
                (
                    "UPDATE axess_tenant_peppers SET version = version + 1 WHERE tenant_id = ?",
                    (tenant_id,),
                ),
                ("SELECT version FROM axess_tenant_peppers WHERE tenant_id = ?", (tenant_id,)),
            ],
            IDENTITY,
        )
        return int(rows[0][0])

    # -- users ----------------------------------------------------------------
    async def create_user(self, user: UserRecord) -> bool:
        sql = f"INSERT INTO axess_users ({_USER_COLS}) VALUES (?, ?, ?, ?, ?, ?)"  # noqa: S608
        args = (
            user.id,
            user.tenant_id,
            user.identifier,
            user.status,
            ms(user.created_at),
            None if user.last_login_at is None else ms(user.last_login_at),
        )
        return await self._insert_absent("create_user", sql, args)

    async def get_user(self, user_id: str) -> UserRecord | None:
        sql = f"SELECT {_USER_COLS} FROM axess_users WHERE user_id = ?"  # noqa: S608
        rows = await self._fetch("get_user", sql, (user_id,))
        return _user(rows[0]) if rows else None

    async def find_user(self, tenant_id: str, identifier: str) -> UserRecord | None:
        sql = f"SELECT {_USER_COLS} FROM axess_users WHERE tenant_id = ? AND identifier = ?"  # noqa: S608
        rows = await self._fetch("find_user", sql, (tenant_id, identifier))
        return _user(rows[0]) if rows else None

    async def set_user_status(self, user_id: str, status: str) -> bool:
        sql = "UPDATE axess_users SET status = ? WHERE user_id = ?"
        return await self._execute("set_user_status", sql, (status, user_id)) == 1

    async def record_login(self, user_id: str, at: float) -> None:
        sql = "UPDATE axess_users SET last_login_at = ? WHERE user_id = ?"
        await self._execute("record_login", sql, (ms(at), user_id))

    # -- factors --------------------------------------------------------------
    async def get_factors(self, user_id: str) -> FactorRecord:
        """The factor row and the recovery-code count: one ``SELECT``, whether
        the row exists or not (a login reads the factors of unknown
        identifiers too, and must take the same round trips for them)."""
        sql = (
            "SELECT f.password_hash, f.totp_secret, f.totp_last_step, "
            "(SELECT COUNT(*) FROM axess_recovery_codes c WHERE c.user_id = ?) "
            "FROM (SELECT 1 AS one) AS x LEFT JOIN axess_factors f ON f.user_id = ?"
        )
        rows = await self._fetch("get_factors", sql, (user_id, user_id), FACTORS)
        r = rows[0]
        return FactorRecord(
            user_id,
            password_hash=None if r[0] is None else str(r[0]),
            totp_secret=None if r[1] is None else bytes(r[1]),
            totp_last_step=None if r[2] is None else int(r[2]),
            recovery_codes=int(r[3]),
        )

    async def _ensure_then(
        self,
        what: str,
        ensure: tuple[str, str, Sequence[object]],
        steps: Sequence[tuple[str, Sequence[object]]],
        substore: str,
    ) -> Sequence[Sequence[Any]]:
        """In one transaction: insert the row ``ensure`` = (table, columns,
        values) unless its key exists, then run ``steps``; the rows the last
        step fetched (every dialect: the insert-if-absent, then updates)."""
        table, columns, values = ensure
        marks = ", ".join("?" * len(values))
        first = columns.split(",")[0]
        suffix = self._dialect.ignore_duplicate.format(first=first)
        insert = self._sql(
            f"INSERT INTO {table} ({columns}) VALUES ({marks})"  # noqa: S608
            + suffix
        )
        statements = [(self._sql(sql), args) for sql, args in steps]

        async def run(conn: Connection) -> Sequence[Sequence[Any]]:
            await conn.run(insert, values)
            rows: Sequence[Sequence[Any]] = ()
            for sql, args in statements:
                rows = (await conn.run(sql, args, fetch=sql.lstrip().startswith("SELECT"))).rows
            return rows

        async def body(conn: Connection) -> Sequence[Sequence[Any]]:
            return await self._transaction(conn, self._dialect.begin, lambda: run(conn))

        return await self._op(what, body, substore=substore)

    async def _upsert_factor(self, what: str, column_sql: str, args: Sequence[object]) -> None:
        """Make sure the user's factor row exists, then update it (one transaction)."""
        update = f"UPDATE axess_factors SET {column_sql} WHERE user_id = ?"  # noqa: S608
        ensure = ("axess_factors", "user_id", (args[-1],))
        await self._ensure_then(what, ensure, [(update, args)], FACTORS)

    async def set_password_hash(self, user_id: str, phc: str | None) -> None:
        await self._upsert_factor("set_password_hash", "password_hash = ?", (phc, user_id))

    async def rehash_password(self, user_id: str, expected: str, phc: str) -> bool:
        """Compare-and-set on the password hash: one ``UPDATE``."""
        sql = "UPDATE axess_factors SET password_hash = ? WHERE user_id = ? AND password_hash = ?"
        return await self._execute("rehash_password", sql, (phc, user_id, expected), FACTORS) == 1

    async def set_totp_secret(self, user_id: str, sealed: bytes | None) -> None:
        value = None if sealed is None else bytes(sealed)
        await self._upsert_factor(
            "set_totp_secret", "totp_secret = ?, totp_last_step = NULL", (value, user_id)
        )

    async def totp_accept_step(self, user_id: str, step: int) -> bool:
        """Compare-and-set of the last accepted step: one ``UPDATE``."""
        sql = (
            "UPDATE axess_factors SET totp_last_step = ? WHERE user_id = ? "
            "AND totp_secret IS NOT NULL AND (totp_last_step IS NULL OR totp_last_step < ?)"
        )
        return await self._execute("totp_accept_step", sql, (step, user_id, step), FACTORS) == 1

    async def enable_totp(self, user_id: str, sealed: bytes, step: int) -> bool:
        """In one transaction: the factor row made to exist, the secret set
        where there is none, then read back: ``True`` only if it is ours (a
        concurrent call's update waits for ours and then finds a secret)."""
        value = bytes(sealed)
        update = (
            "UPDATE axess_factors SET totp_secret = ?, totp_last_step = ? "
            "WHERE user_id = ? AND totp_secret IS NULL"
        )
        check = "SELECT COUNT(*) FROM axess_factors WHERE user_id = ? AND totp_secret = ?"
        ensure = ("axess_factors", "user_id", (user_id,))
        steps = [(update, (value, step, user_id)), (check, (user_id, value))]
        rows = await self._ensure_then("enable_totp", ensure, steps, FACTORS)
        return bool(rows) and int(rows[0][0]) == 1

    async def reseal_totp_secret(self, user_id: str, expected: bytes, sealed: bytes) -> bool:
        """Compare-and-set on the sealed bytes; ``totp_last_step`` is untouched."""
        sql = "UPDATE axess_factors SET totp_secret = ? WHERE user_id = ? AND totp_secret = ?"
        args = (bytes(sealed), user_id, bytes(expected))
        return await self._execute("reseal_totp_secret", sql, args, FACTORS) == 1

    async def replace_recovery_codes(self, user: str, hashes: Sequence[str]) -> None:
        unique = sorted(set(hashes))
        delete = self._sql("DELETE FROM axess_recovery_codes WHERE user_id = ?")
        insert = self._sql(
            "INSERT INTO axess_recovery_codes (user_id, code_hash) VALUES "  # noqa: S608
            + ", ".join(["(?, ?)"] * len(unique))
        )

        async def steps(conn: Connection) -> None:
            await conn.run(delete, (user,))
            if unique:
                await conn.run(insert, [v for h in unique for v in (user, h)])

        async def body(conn: Connection) -> None:
            await self._transaction(conn, self._dialect.begin, lambda: steps(conn))

        await self._op("replace_recovery_codes", body, substore=FACTORS)

    async def consume_recovery_code(self, user: str, candidates: Collection[str]) -> bool:
        """Delete one matching hash: one ``DELETE``; True if a row went."""
        wanted = sorted(set(candidates))
        if not wanted:
            return False
        marks = ", ".join("?" * len(wanted))
        sql = f"DELETE FROM axess_recovery_codes WHERE user_id = ? AND code_hash IN ({marks})"  # noqa: S608
        return await self._execute("consume_recovery_code", sql, (user, *wanted), FACTORS) >= 1

    async def count_recovery_codes(self, user: str) -> int:
        sql = "SELECT COUNT(*) FROM axess_recovery_codes WHERE user_id = ?"
        rows = await self._fetch("count_recovery_codes", sql, (user,), FACTORS)
        return int(rows[0][0]) if rows else 0

    async def purge_identity(self, now: float) -> int:
        """Nothing in identity/factors expires (a purge target that deletes nothing)."""
        return 0
