"""PostgreSQL for ``scripts/chaos --replicas`` and ``scripts/bench --replicas``: the server a URL
names, or, for ``--store postgresql`` alone, a throwaway cluster started by the test suite's own
code (``tests/pgcluster.py``: initdb in a temporary folder, 127.0.0.1, stopped at the end).
Each measured run gets a fresh schema of its own, selected by ``search_path`` in its URL."""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import parse_qsl, quote, urlencode, urlsplit, urlunsplit

import psycopg
from _common import REPO

if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from tests import pgcluster


@dataclass(frozen=True)
class Postgres:
    url: str  # no password in it
    password: str

    def fresh(self, label: str) -> str:
        """A new empty schema; the URL that selects it."""
        name = f"{label}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(_with_options(self.url, None), password=self.password, autocommit=True) as conn:
            conn.execute(f'CREATE SCHEMA "{name}"')
        return _with_options(self.url, f"-csearch_path={name}")


def _with_options(url: str, options: str | None) -> str:
    """``url`` with its libpq ``options`` replaced (removed when None); TLS settings kept."""
    parts = urlsplit(url)
    query = [(k, v) for k, v in parse_qsl(parts.query) if k != "options"]
    query += [("options", options)] if options else []
    return urlunsplit(parts._replace(query=urlencode(query, quote_via=quote)))


@contextlib.contextmanager
def postgres(store: str) -> Iterator[Postgres]:
    """``store``: a postgresql:// URL (its password in SFSYNC_STORE_PASSWORD or PGPASSWORD), or
    ``postgresql`` for a throwaway cluster."""
    if store in ("postgresql", "postgres"):
        reason = pgcluster.unavailable_reason()
        if reason:
            raise SystemExit(f"--store postgresql: {reason}")
        with pgcluster.server() as server:
            yield Postgres(server.fresh_database(), server.password)
        return
    if not store.startswith(("postgresql://", "postgres://")):
        raise SystemExit("--store: a postgresql:// URL, or 'postgresql' for a throwaway cluster")
    yield Postgres(store, os.environ.get("SFSYNC_STORE_PASSWORD") or os.environ.get("PGPASSWORD", ""))
