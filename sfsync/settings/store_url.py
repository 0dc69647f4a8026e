"""Where the store lives: ``SFSYNC_STORE_URL`` parsed once, checked before anything connects.

Unset, or ``sqlite:///path``: a SQLite file (``sqlite:////abs/path`` and ``sqlite:///rel/path`` as
SQLAlchemy reads them: three slashes then the path, relative to the working folder unless it starts
with ``/``). ``postgresql://`` or ``postgres://``: a libpq URL (query options such as ``sslmode``,
``sslrootcert`` and ``connect_timeout`` pass through to libpq, and so do the ``PG*`` variables).
The password never goes in the URL: it comes from ``SFSYNC_STORE_PASSWORD``, the file named by
``SFSYNC_STORE_PASSWORD_FILE``, ``PGPASSWORD`` or ``~/.pgpass`` (libpq's own).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from sfsync.errors import ConfigError

POSTGRES_SCHEMES = ("postgresql", "postgres")
DEFAULT_CONNECT_TIMEOUT = "10"  # seconds, unless the URL or PGCONNECT_TIMEOUT says otherwise


@dataclass(frozen=True)
class StoreTarget:
    dialect: str  # "sqlite" | "postgresql"
    path: Path | None = None  # SQLite
    conninfo: str = ""  # PostgreSQL: the URL as given (it holds no password)
    password: str = field(default="", repr=False)
    label: str = ""  # safe to print: the file, or "database D on H:P as U"

    def __str__(self) -> str:
        return self.label


def sqlite_target(path: Path) -> StoreTarget:
    return StoreTarget("sqlite", path=path, label=str(path))


def parse_store_url(url: str, default_path: Path, password: str = "", environ: Mapping[str, str] | None = None,
                    ) -> StoreTarget:
    """The store ``url`` names (``default_path`` when empty); a ``ConfigError`` naming
    SFSYNC_STORE_URL when it cannot be used."""
    url = url.strip()
    if not url:
        return sqlite_target(default_path)
    scheme = url.split(":", 1)[0].lower() if ":" in url else ""
    if scheme == "sqlite":
        if not url.lower().startswith("sqlite:///") or len(url) <= len("sqlite:///"):
            raise ConfigError("SFSYNC_STORE_URL: a SQLite store is sqlite:///relative/path or "
                              "sqlite:////absolute/path (three slashes, then the path)")
        return sqlite_target(Path(unquote(url[len("sqlite:///"):])))
    if scheme in POSTGRES_SCHEMES:
        return _postgres_target(url, password, environ or {})
    raise ConfigError(f"SFSYNC_STORE_URL: unknown scheme {scheme or '(none)'!r}; use sqlite:///path or "
                      "postgresql://user@host:port/database")


def _postgres_target(url: str, password: str, environ: Mapping[str, str]) -> StoreTarget:
    try:
        parts = urlsplit(url)
        port = parts.port
        query = dict(parse_qsl(parts.query, keep_blank_values=True))
    except ValueError as exc:
        raise ConfigError(f"SFSYNC_STORE_URL is not a valid PostgreSQL URL ({exc})") from None
    if parts.password is not None or "password" in query:
        raise ConfigError("SFSYNC_STORE_URL must not hold the password: remove it from the URL and set "
                          "SFSYNC_STORE_PASSWORD or SFSYNC_STORE_PASSWORD_FILE (or PGPASSWORD, or ~/.pgpass)")
    host = parts.hostname or query.get("host") or environ.get("PGHOST") or "localhost"
    database = unquote(parts.path.lstrip("/")) or query.get("dbname") or environ.get("PGDATABASE") or "(default)"
    user = unquote(parts.username or "") or query.get("user") or environ.get("PGUSER") or "(default)"
    shown_port = port or query.get("port") or environ.get("PGPORT") or 5432
    label = f"PostgreSQL database {database} on {host}:{shown_port} as {user}"
    return StoreTarget("postgresql", conninfo=url, password=password, label=label)


def store_password(environ: Mapping[str, str]) -> str:
    """The PostgreSQL password from SFSYNC_STORE_PASSWORD or the file SFSYNC_STORE_PASSWORD_FILE names
    (its first line); empty when neither is set (libpq then reads PGPASSWORD or ~/.pgpass)."""
    direct = environ.get("SFSYNC_STORE_PASSWORD", "")
    file_name = environ.get("SFSYNC_STORE_PASSWORD_FILE", "").strip()
    if direct and file_name:
        raise ConfigError("set SFSYNC_STORE_PASSWORD or SFSYNC_STORE_PASSWORD_FILE, not both")
    if not file_name:
        return direct
    try:
        text = Path(file_name).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"SFSYNC_STORE_PASSWORD_FILE: cannot read {file_name} ({type(exc).__name__}: "
                          f"{getattr(exc, 'strerror', None) or 'not UTF-8 text'})") from None
    lines = text.splitlines()
    if not lines or not lines[0]:
        raise ConfigError(f"SFSYNC_STORE_PASSWORD_FILE: {file_name} is empty")
    return lines[0]


def target_from_environ(environ: Mapping[str, str], default_path: Path) -> StoreTarget:
    """The store the environment names: SFSYNC_STORE_URL and the password variables."""
    url = environ.get("SFSYNC_STORE_URL", "")
    password = store_password(environ) if url.strip() else ""
    return parse_store_url(url, default_path, password, environ)
