"""SQL session stores: one engine (:mod:`.engine`), three thin dialects.

``SQLiteStore`` needs only the core install; ``PostgresStore`` and
``MySQLStore`` import asyncpg / aiomysql when they first connect.
"""

from axess.stores.sql.engine import SQLStore, redact_dsn
from axess.stores.sql.mysql import MySQLStore
from axess.stores.sql.postgres import PostgresStore
from axess.stores.sql.sqlite import SQLiteStore

__all__ = ["MySQLStore", "PostgresStore", "SQLStore", "SQLiteStore", "redact_dsn"]
