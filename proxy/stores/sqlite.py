"""An embedded store that survives restarts: one SQLite file, used from a worker thread.

sqlite3 blocks, so every call runs on one dedicated thread and the event loop only awaits it.
Several processes on one machine may share the file (WAL mode).
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from proxy.stores.base import Clock, Fold, Learned
from proxy.stores.errors import StoreError

T = TypeVar("T")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS tokens (
    digest TEXT PRIMARY KEY,      -- SHA-256 of the access token; the token itself is never stored
    scopes TEXT NOT NULL,         -- comma-separated
    expires_at REAL NOT NULL      -- UNIX time
);
CREATE TABLE IF NOT EXISTS calls (
    key TEXT PRIMARY KEY,         -- one kind of decided call (proxy.report.model.Call.key)
    count INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS budget (
    key TEXT PRIMARY KEY,         -- app, company and day (proxy.core.budget.Ledger.key)
    count INTEGER NOT NULL,       -- tokens the app's processes drew of that day
    expires_at REAL NOT NULL      -- UNIX time
);
CREATE TABLE IF NOT EXISTS seen (
    key TEXT PRIMARY KEY,         -- a drift's kind and endpoint (proxy.report.model.seen_key)
    first TEXT NOT NULL,          -- ISO 8601 UTC: sorts as text
    last TEXT NOT NULL
);
"""


class SqliteStore:
    def __init__(self, path: str, clock: Clock = time.time) -> None:
        self.path = Path(path)
        self.clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sqlite-store")
        self._connection: sqlite3.Connection | None = None

    def _connect(self) -> sqlite3.Connection:
        if self._connection is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            connection = sqlite3.connect(self.path, timeout=2, check_same_thread=False)
            connection.execute("PRAGMA journal_mode=WAL")
            connection.executescript(_SCHEMA)
            columns = {row[1] for row in connection.execute("PRAGMA table_info(tokens)")}
            if "company" not in columns:  # a file an earlier version made: its tokens, no company
                connection.execute("ALTER TABLE tokens ADD COLUMN company TEXT")
            connection.commit()
            self._connection = connection
        return self._connection

    async def _run(self, work: Callable[[sqlite3.Connection], T]) -> T:
        def call() -> T:
            try:
                return work(self._connect())
            except (sqlite3.Error, OSError) as error:
                self._drop_connection()
                raise StoreError(f"sqlite {self.path}: {error}") from None

        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def _drop_connection(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def get(self, digest: str) -> Learned | None:
        def select(db: sqlite3.Connection) -> Learned | None:
            row = db.execute(
                "SELECT scopes, expires_at, company FROM tokens "
                "WHERE digest = ? AND expires_at > ?",
                (digest, self.clock()),
            ).fetchone()
            if row is None:
                return None
            return Learned(frozenset(filter(None, row[0].split(","))), row[1], row[2])

        return await self._run(select)

    async def put(
        self, digest: str, scopes: frozenset[str], expires_at: float, company: str | None = None
    ) -> None:
        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM tokens WHERE expires_at <= ?", (self.clock(),))
                db.execute(
                    "INSERT OR REPLACE INTO tokens (digest, scopes, expires_at, company) "
                    "VALUES (?, ?, ?, ?)",
                    (digest, ",".join(sorted(scopes)), expires_at, company),
                )

        await self._run(upsert)

    async def forget(self, digest: str) -> None:
        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM tokens WHERE digest = ?", (digest,))

        await self._run(delete)

    async def add_calls(self, counts: Mapping[str, int]) -> None:
        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT INTO calls (key, count) VALUES (?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET count = count + excluded.count",
                    list(counts.items()),
                )

        await self._run(upsert)

    async def call_counts(self) -> dict[str, int]:
        return await self._run(lambda db: dict(db.execute("SELECT key, count FROM calls")))

    async def reset_calls(self) -> None:
        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.execute("DELETE FROM calls")
                db.execute("DELETE FROM seen")

        await self._run(delete)

    async def compact_calls(self, fold: Fold) -> None:
        def compact(db: sqlite3.Connection) -> None:
            with db:  # one transaction: other processes' additions wait for it
                db.execute("BEGIN IMMEDIATE")
                folded = fold(dict(db.execute("SELECT key, count FROM calls")))
                if folded is not None:
                    db.execute("DELETE FROM calls")
                    db.executemany("INSERT INTO calls (key, count) VALUES (?, ?)", folded.items())

        await self._run(compact)

    async def add_seen(self, seen: Mapping[str, tuple[str, str]]) -> None:
        def upsert(db: sqlite3.Connection) -> None:
            with db:
                db.executemany(
                    "INSERT INTO seen (key, first, last) VALUES (?, ?, ?) ON CONFLICT(key) "
                    "DO UPDATE SET first = min(first, excluded.first), "
                    "last = max(last, excluded.last)",
                    [(key, first, last) for key, (first, last) in seen.items()],
                )

        await self._run(upsert)

    async def seen_times(self) -> dict[str, tuple[str, str]]:
        rows = await self._run(lambda db: list(db.execute("SELECT key, first, last FROM seen")))
        return {key: (first, last) for key, first, last in rows}

    async def forget_seen(self, keys: Iterable[str]) -> None:
        dropped = [(key,) for key in keys]

        def delete(db: sqlite3.Connection) -> None:
            with db:
                db.executemany("DELETE FROM seen WHERE key = ?", dropped)

        await self._run(delete)

    async def draw_budget(self, key: str, want: int, cap: int, ttl: float) -> tuple[int, int]:
        now = self.clock()

        def draw(db: sqlite3.Connection) -> tuple[int, int]:
            with db:  # one transaction: processes on this machine draw one at a time
                db.execute("BEGIN IMMEDIATE")
                db.execute("DELETE FROM budget WHERE expires_at <= ?", (now,))
                row = db.execute("SELECT count FROM budget WHERE key = ?", (key,)).fetchone()
                count = int(row[0]) if row is not None else 0
                granted = max(0, min(want, cap - count))
                db.execute(
                    "INSERT INTO budget (key, count, expires_at) VALUES (?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET count = excluded.count",
                    (key, count + granted, now + ttl),
                )
            return granted, count + granted

        return await self._run(draw)

    async def give_back_budget(self, key: str, amount: int) -> None:
        def give_back(db: sqlite3.Connection) -> None:
            with db:
                db.execute(
                    "UPDATE budget SET count = MAX(0, count - ?) WHERE key = ?", (amount, key)
                )

        await self._run(give_back)

    async def ping(self) -> None:
        await self._run(lambda db: db.execute("SELECT 1").fetchone())

    async def close(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._executor, self._drop_connection)
        self._executor.shutdown(wait=True)
