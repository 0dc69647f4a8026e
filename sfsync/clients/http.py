"""The one place HTTP sessions are made, for both clients (and the tests' own callers).

requests lets ``REQUESTS_CA_BUNDLE`` (and ``CURL_CA_BUNDLE``) from the environment override a
session's ``verify``: a host whose image sets it would silently ignore ``SFSYNC_CA_BUNDLE``. Our
session keeps the bundle it was given, and never turns verification off.

A certificate the CA bundle does not vouch for, and a URL no request can be made to, are
configuration errors (exit 3), raised at once: retrying cannot help.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter

from sfsync import __version__
from sfsync.errors import ConfigError

USER_AGENT = f"sfsync/{__version__}"


class PinnedSession(requests.Session):
    """A ``requests.Session`` whose CA bundle is not overridden by the environment, and whose
    every request has a timeout (simple-salesforce passes none of its own)."""

    default_timeout: float | tuple[float, float] = (10.0, 60.0)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        try:
            return super().request(method, url, *args, **kwargs)
        except (requests.exceptions.SSLError, requests.exceptions.InvalidURL, requests.exceptions.InvalidSchema,
                requests.exceptions.MissingSchema) as exc:
            problem = config_fault(exc)
            if problem is None:
                raise
            raise ConfigError(f"{problem} ({_where(url)})") from exc

    def merge_environment_settings(self, url: Any, proxies: Any, stream: Any, verify: Any, cert: Any) -> Any:
        settings = super().merge_environment_settings(url, proxies, stream, verify, cert)
        if verify is None and isinstance(self.verify, str):
            settings["verify"] = self.verify
        if settings.get("verify") is False:
            settings["verify"] = True  # never without verification
        return settings


def make_session(
    ca_bundle: str | None = None, pool_size: int = 4, timeout: float | tuple[float, float] | None = None
) -> PinnedSession:
    """A keep-alive session; ``ca_bundle`` (a PEM path) replaces the system trust store;
    ``timeout`` is (connect, read) seconds for every request that does not set its own."""
    session = PinnedSession()
    if timeout is not None:
        session.default_timeout = timeout
    if ca_bundle:
        session.verify = str(ca_bundle)
    adapter = HTTPAdapter(pool_connections=pool_size, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.headers["User-Agent"] = USER_AGENT
    return session


def config_fault(exc: BaseException) -> str | None:
    """What to fix when ``exc`` is a failure no retry can mend, else None (a transient failure)."""
    if isinstance(exc, requests.exceptions.InvalidURL | requests.exceptions.InvalidSchema
                  | requests.exceptions.MissingSchema):
        return ("not a URL a request can be made to: check the https URL settings (SFSYNC_MM_BASE_URL, "
                "SFSYNC_SF_LOGIN_URL, SFSYNC_SF_INSTANCE_URL) and the port")
    for cause in _causes(exc):
        if isinstance(cause, ssl.SSLCertVerificationError):
            return (f"the service's TLS certificate is not trusted ({cause.verify_message or cause.reason}): "
                    "set SFSYNC_CA_BUNDLE to a PEM file holding the CA that signed it (a corporate proxy's, or "
                    "the simulator's), and check the host name in the URL setting")
        if isinstance(cause, ssl.SSLError) and cause.library in ("X509", "PEM"):
            return f"the CA bundle cannot be used ({cause.reason}): set SFSYNC_CA_BUNDLE to a PEM file of certificates"
    return None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and everything it wraps (requests wraps urllib3, which wraps ``ssl``), each once."""
    seen: set[int] = set()
    todo: list[BaseException] = [exc]
    while todo:
        current = todo.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        yield current
        linked = [current.__cause__, current.__context__, getattr(current, "reason", None), *current.args]
        todo += [e for e in linked if isinstance(e, BaseException)]


def _where(url: Any) -> str:
    try:
        parts = urlsplit(str(url))
        return f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}"
    except ValueError:
        return "a configured URL"


def why_unreachable(exc: BaseException) -> str:
    """A connection failure in words: the host it was for and the cause (refused, DNS, TLS, timeout),
    e.g. ``api.messagemedia.com:443: connection refused``."""
    request = getattr(exc, "request", None)
    where = _where(request.url) if request is not None and getattr(request, "url", None) else "the service"
    return f"{where.partition('://')[2] or where}: {_cause(exc)}"


def _cause(exc: BaseException) -> str:
    import socket

    if isinstance(exc, requests.exceptions.ConnectTimeout):
        return "timed out connecting"
    if isinstance(exc, requests.exceptions.ReadTimeout):
        return "timed out waiting for the answer (SFSYNC_HTTP_TIMEOUT)"
    for cause in _causes(exc):
        if isinstance(cause, socket.gaierror) or "NameResolutionError" in type(cause).__name__:
            return "DNS: the host name does not resolve"
        if isinstance(cause, ConnectionRefusedError):
            return "connection refused"
        if isinstance(cause, ssl.SSLError):
            return f"TLS: {getattr(cause, 'reason', None) or cause}"
        if isinstance(cause, ConnectionResetError):
            return "connection reset by the peer"
        if isinstance(cause, TimeoutError):
            return "timed out"
    if isinstance(exc, requests.exceptions.ChunkedEncodingError):
        return "the connection broke mid-answer"
    return f"connection failed ({type(exc).__name__})"
