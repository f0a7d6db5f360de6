"""What a substore mixin of :class:`~axess.stores.sql.engine.SQLStore` may use
from the store it is mixed into (book: Internals, "Adding a backend").

The identity and lockout substores live in their own modules, one
implementation for every dialect; both build statements the same way and
run them through the store's operation and transaction helpers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, TypeVar

from axess.stores.sql.params import placeholders

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from axess.stores.sql.engine import Connection, Dialect, Driver

T = TypeVar("T")


class SQLStorePart:
    """Base of the substore mixins: the store's attributes they rely on
    (declared for the type checker only) and the statement builder."""

    if TYPE_CHECKING:
        name: str
        _dialect: Dialect
        _driver: Driver

        async def _op(
            self,
            what: str,
            body: Callable[[Connection], Awaitable[T]],
            *,
            log: bool = True,
            substore: str = ...,
        ) -> T: ...

        async def _transaction(
            self, conn: Connection, begin: str, body: Callable[[], Awaitable[T]]
        ) -> T: ...

    def _sql(self, sql: str) -> str:
        """``sql`` written with ``?`` placeholders, in the dialect's style."""
        return placeholders(sql, self._dialect.paramstyle)
