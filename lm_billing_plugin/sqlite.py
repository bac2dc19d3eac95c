"""SQLite settings for the engine billing writes through: WAL, a busy timeout, and BEGIN IMMEDIATE
for the plugin's write transactions, so concurrent writers wait for each other instead of failing.

Why each one:

* **WAL** (``journal_mode=WAL``): readers never block the writer and the writer never blocks
  readers, so pages keep answering while a validation writes.
* **busy_timeout**: a writer that finds another one at work waits (up to the timeout) instead
  of failing at once with ``database is locked``.
* **BEGIN IMMEDIATE**: SQLite cannot upgrade a read transaction to a write one while another
  connection writes; it fails at once (``database is locked``, no waiting: waiting could
  deadlock), whatever the busy timeout says. So every transaction that may write takes the
  write lock when it begins, and waits for it there. Which transactions may write: those
  begun inside :func:`writes` (the engine's batches, the scheduler, the plugin's commands)
  and in non-GET requests to the plugin's pages (:func:`writes_in_this_request`). Every other
  transaction — the host's own, and page views — begins as SQLite's default (deferred).

The plugin's own write transactions are short (one per server, never across network I/O),
so waiting for the lock is short too. :func:`tune_engine` is idempotent; it is a no-op for
other databases.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import weakref
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any, Final, ParamSpec, TypeVar

import sqlalchemy as sa
from flask import g, has_app_context, has_request_context

__all__ = ["is_tuned", "tune_engine", "writes", "writes_in_this_request", "writing"]

log = logging.getLogger("lm_billing_plugin.sqlite")

_WRITES: ContextVar[bool] = ContextVar("lm_billing_sqlite_writes", default=False)
_REQUEST_FLAG: Final = "_lm_billing_sqlite_writes"
_PREPARED: Final = "lm_billing_sqlite_prepared"
_TUNED: weakref.WeakKeyDictionary[sa.Engine, float] = weakref.WeakKeyDictionary()


@contextlib.contextmanager
def writes() -> Iterator[None]:
    """Transactions begun in this block (this thread) take SQLite's write lock at BEGIN."""
    token = _WRITES.set(True)
    try:
        yield
    finally:
        _WRITES.reset(token)


_P = ParamSpec("_P")
_R = TypeVar("_R")


def writing(func: Callable[_P, _R]) -> Callable[_P, _R]:
    """Decorator form of :func:`writes`, for the services whose transactions write."""

    @functools.wraps(func)
    def wrapper(*args: _P.args, **kwargs: _P.kwargs) -> _R:
        with writes():
            return func(*args, **kwargs)

    return wrapper


def writes_in_this_request() -> None:
    """The current request may write: its transactions begin IMMEDIATE (on SQLite)."""
    setattr(g, _REQUEST_FLAG, True)


def _wants_write() -> bool:
    if _WRITES.get():
        return True
    # g lives as long as the request's app context; a background thread's own app context
    # has its own g, so a request's flag never leaks into another thread or request.
    return has_request_context() and has_app_context() and bool(
        getattr(g, _REQUEST_FLAG, False))


def _in_memory(engine: sa.Engine) -> bool:
    database = engine.url.database or ""
    return database in ("", ":memory:") or "mode=memory" in str(engine.url)


def tune_engine(engine: sa.Engine, *, busy_timeout: float) -> bool:
    """Set WAL (file databases), ``busy_timeout`` (seconds) and IMMEDIATE write transactions on
    every connection ``engine`` opens from now on. Returns whether ``engine`` is SQLite."""
    if engine.dialect.name != "sqlite":
        return False
    if engine in _TUNED:
        return True
    _TUNED[engine] = busy_timeout
    wal = not _in_memory(engine)
    milliseconds = max(0, int(busy_timeout * 1000))

    def prepare(dbapi_connection: Any, info: dict[Any, Any]) -> None:
        if info.get(_PREPARED):
            return
        info[_PREPARED] = True
        # The driver's own implicit BEGIN (deferred, and only before DML) is replaced by the
        # BEGIN on_begin emits, so SQLAlchemy's transactions are SQLite's transactions.
        dbapi_connection.isolation_level = None
        cursor = dbapi_connection.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {milliseconds}")
            if wal:
                mode = cursor.execute("PRAGMA journal_mode = WAL").fetchone()
                if mode and str(mode[0]).lower() != "wal":
                    log.warning("SQLite kept journal_mode %s (WAL not possible here)", mode[0])
        finally:
            cursor.close()

    def on_connect(dbapi_connection: Any, record: Any) -> None:
        prepare(dbapi_connection, record.info)

    def on_begin(conn: sa.Connection) -> None:
        if conn.get_execution_options().get("isolation_level") == "AUTOCOMMIT":
            return
        # A connection pooled before the listeners existed (a host's create_all, say) is
        # prepared here, between transactions, where changing the driver's mode is safe.
        pooled = conn.connection
        prepare(pooled.dbapi_connection, pooled.info)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if _wants_write() else "BEGIN")

    sa.event.listen(engine, "connect", on_connect)
    sa.event.listen(engine, "begin", on_begin)
    return True


def is_tuned(engine: sa.Engine) -> bool:
    """Whether :func:`tune_engine` set up ``engine``."""
    return engine in _TUNED
