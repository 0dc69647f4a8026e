"""The MessageMedia simulator's authentication: Basic and HMAC credentials, and the ``Account``
header that selects the account (or sub-account) a call acts for."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import time
from email.utils import parsedate_to_datetime

from sfsync.sim.base import Handler, HttpError, Request, Response
from sfsync.sim.mm_model import AUTH_MESSAGE, HMAC_MAX_SKEW_S, MessageMediaState, SimKey

_HMAC_DIGESTS = {"hmac-sha1": hashlib.sha1, "hmac-sha256": hashlib.sha256}
_HMAC_PARAM = re.compile(r'(\w+)="([^"]*)"')


class AuthPart:
    """The credential checks every API route passes (``guard``), and the key pairs they accept."""

    def __init__(self, state: MessageMediaState):
        self.state = state

    def add_key(self, key: SimKey) -> None:
        """Accept another key pair (until the state is cleared)."""
        with self.state.lock:
            self.state.keys[key.api_key] = key

    def guard(self, handler: Handler) -> Handler:
        """``handler`` behind the credential and ``Account`` checks: it sees ``request.principal`` (the
        key) and ``request.account`` (the account acted for) set."""

        def guarded(request: Request) -> Response:
            key = self._credentials(request)
            if key is None:
                raise HttpError(self.state.settings.auth_failure_status, AUTH_MESSAGE)
            header = request.headers.get("Account")
            acting = (header or "").strip() or key.account
            if not key.may_act_for(acting):
                raise HttpError(403, f"Not authorised to act on behalf of account {acting[:100]}")
            request.principal, request.account = key, acting
            return handler(request)

        return guarded

    def _credentials(self, request: Request) -> SimKey | None:
        """The key pair that authenticates the call (Basic or HMAC), or None."""
        scheme, _, value = (request.headers.get("Authorization") or "").strip().partition(" ")
        with self.state.lock:
            keys = list(self.state.keys.values())
        if scheme.lower() == "basic":
            try:
                key, sep, secret = base64.b64decode(value.strip(), validate=True).decode().partition(":")
            except (binascii.Error, UnicodeDecodeError):
                return None
            found = [k for k in keys if _same(key, k.api_key) and _same(secret, k.api_secret)]
            return found[0] if sep and found else None
        if scheme.lower() == "hmac":
            return next((k for k in keys if _hmac_ok(request, value, k)), None)
        return None


def _hmac_ok(request: Request, value: str, key: SimKey) -> bool:
    """HMAC auth as the SDKs (hmac-sha1, x-Content-MD5) and the newer docs (hmac-sha256,
    Content-MD5) describe it: both readings are accepted."""
    params = dict(_HMAC_PARAM.findall(value))
    digest = _HMAC_DIGESTS.get(params.get("algorithm", "").lower())
    names = params.get("headers", "").split()
    if digest is None or not _same(params.get("username", ""), key.api_key):
        return False
    if "date" not in (n.lower() for n in names):
        return False
    try:
        sent = parsedate_to_datetime(request.headers.get("Date") or "")
    except (TypeError, ValueError):
        return False
    if abs(time.time() - sent.timestamp()) > HMAC_MAX_SKEW_S:
        return False
    body = request.body()
    if body:
        md5_names = [n for n in names if n.lower() in ("x-content-md5", "content-md5")]
        body_md5 = hashlib.md5(body, usedforsecurity=False).hexdigest()
        if not md5_names or (request.headers.get(md5_names[0]) or "").lower() != body_md5:
            return False
    lines = []
    for name in names:
        if name.lower() == "request-line":
            lines.append(f"{request.method} {request.target} HTTP/1.1")
            continue
        header = request.headers.get(name)
        if header is None:
            return False
        lines.append(f"{name}: {header}")
    expected = hmac.new(key.api_secret.encode(), "\n".join(lines).encode(), digest).digest()
    return _same(params.get("signature", ""), base64.b64encode(expected).decode())


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode(), expected.encode())

