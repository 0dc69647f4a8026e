"""The one place HTTP sessions are made, for both clients (and the tests' own callers).

requests lets ``REQUESTS_CA_BUNDLE`` (and ``CURL_CA_BUNDLE``) from the environment override a
session's ``verify``: a host whose image sets it would silently ignore ``SFSYNC_CA_BUNDLE``. Our
session keeps the bundle it was given, and never turns verification off.
"""

from __future__ import annotations

from typing import Any

import requests
from requests.adapters import HTTPAdapter

from sfsync import __version__

USER_AGENT = f"sfsync/{__version__}"


class PinnedSession(requests.Session):
    """A ``requests.Session`` whose CA bundle is not overridden by the environment, and whose
    every request has a timeout (simple-salesforce passes none of its own)."""

    default_timeout: float | tuple[float, float] = (10.0, 60.0)

    def request(self, method: Any, url: Any, *args: Any, **kwargs: Any) -> requests.Response:
        if kwargs.get("timeout") is None:
            kwargs["timeout"] = self.default_timeout
        return super().request(method, url, *args, **kwargs)

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
