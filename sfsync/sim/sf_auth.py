"""The Salesforce simulator's OAuth 2.0 token endpoint (client credentials, username-password and
RS256 JWT bearer grants) and the bearer-token check every REST call passes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any
from urllib.parse import parse_qs

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sfsync.sim import soql
from sfsync.sim.base import HttpError, Request, Response
from sfsync.sim.bulk import USER_ID
from sfsync.sim.sf_records import TaskRecords
from sfsync.sim.sf_usage import ApiUsage

ORG_ID = soql.make_id("00D", 1)
JWT_GRANT = "urn:ietf:params:oauth:grant-type:jwt-bearer"
LOGIN_AUDIENCES = ("https://login.salesforce.com", "https://test.salesforce.com")
PROXY_PAGE = "<html><head><title>403 Forbidden</title></head><body><h1>Forbidden</h1>Request blocked.</body></html>"


class _OAuthError(Exception):
    def __init__(self, error: str, description: str):
        super().__init__(description)
        self.error = error
        self.description = description


def load_public_key(pem: bytes | None) -> rsa.RSAPublicKey | None:
    """The connected app's key: a PEM public key or the certificate uploaded to the app."""
    if pem is None:
        return None
    if b"CERTIFICATE" in pem:
        key: Any = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, rsa.RSAPublicKey):
        raise ValueError("JWT bearer needs an RSA public key")
    return key


def _b64url(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


class OAuth:
    """Token grants and token checks: ``token`` is the route handler, ``authenticate`` the check
    every REST route makes first. Issued tokens live here (a reset of the simulator keeps them)."""

    def __init__(
        self,
        records: TaskRecords,
        usage: ApiUsage,
        *,
        client_id: str,
        client_secret: str,
        username: str,
        password: str,
        jwt_public_key_pem: bytes | None,
        jwt_audiences: Iterable[str],
        clock: Callable[[], float],
        base_url: Callable[[], str],
    ):
        self._records = records  # the lock, and the settings (token TTL, token faults)
        self._usage = usage
        self.client_id = client_id
        self.client_secret = client_secret
        self.username = username
        self.password = password
        self._jwt_key = load_public_key(jwt_public_key_pem)
        self.jwt_audiences = {a.rstrip("/") for a in (*LOGIN_AUDIENCES, *jwt_audiences)}  # + Experience Cloud sites
        self.clock = clock  # when a token expires (token_ttl_s): a test may move it on
        self._base_url = base_url  # the server's address, known once it is bound
        self._tokens: dict[str, float] = {}

    def authenticate(self, request: Request) -> None:
        """Refuse a request without a live bearer token (401 INVALID_SESSION_ID)."""
        scheme, _, token = (request.headers.get("Authorization") or "").partition(" ")
        token = token.strip()
        with self._records.lock:
            expiry = self._tokens.get(token) if scheme.lower() in ("bearer", "oauth") else None
            if expiry is not None and expiry <= self.clock():
                del self._tokens[token]
                expiry = None
        if expiry is None:
            raise HttpError(401, "Session expired or invalid", "INVALID_SESSION_ID")

    def expire_tokens(self) -> None:
        with self._records.lock:
            self._tokens.clear()

    # -- the token endpoint --------------------------------------------------------------------
    def token(self, request: Request) -> Response:
        """``POST /services/oauth2/token``."""
        with self._records.lock:
            self._usage.count_token()
            settings = self._records.settings
            unknown, proxy = settings.token_unknown_errors > 0, settings.token_proxy_errors > 0
            if unknown:
                settings.token_unknown_errors -= 1
            elif proxy:
                settings.token_proxy_errors -= 1
        if unknown:
            return Response.json(400, {"error": "unknown_error", "error_description": "retry your request"})
        if proxy:
            return Response.text(403, PROXY_PAGE, "text/html; charset=utf-8")
        form = {k: v[0] for k, v in parse_qs(request.body().decode("utf-8", "replace"), keep_blank_values=True).items()}
        grant = form.get("grant_type")
        try:
            if grant == "client_credentials":
                self._check_client(*self._client_credentials(request, form))
            elif grant == "password":
                self._check_client(form.get("client_id"), form.get("client_secret"))
                if form.get("username") != self.username or form.get("password") != self.password:
                    raise _OAuthError("invalid_grant", "authentication failure")
            elif grant == JWT_GRANT:
                self._check_assertion(form.get("assertion") or "")
            else:
                raise _OAuthError("unsupported_grant_type", "grant type not supported")
        except _OAuthError as exc:
            return Response.json(400, {"error": exc.error, "error_description": exc.description})
        return Response.json(200, self._issue_token())

    def _client_credentials(self, request: Request, form: Mapping[str, str]) -> tuple[str | None, str | None]:
        scheme, _, encoded = (request.headers.get("Authorization") or "").partition(" ")
        if scheme.lower() != "basic":
            return form.get("client_id"), form.get("client_secret")
        try:
            client_id, _, secret = base64.b64decode(encoded.strip()).decode().partition(":")
        except (ValueError, UnicodeDecodeError):
            raise _OAuthError("invalid_client", "invalid client credentials") from None
        return client_id, secret

    def _check_client(self, client_id: str | None, secret: str | None) -> None:
        if client_id != self.client_id:
            raise _OAuthError("invalid_client_id", "client identifier invalid")
        if not hmac.compare_digest((secret or "").encode(), self.client_secret.encode()):
            raise _OAuthError("invalid_grant", "authentication failure")

    def _check_assertion(self, assertion: str) -> None:
        """Verify an RS256 JWT bearer assertion: signature, then iss, sub, aud and exp."""
        parts = assertion.split(".")
        if len(parts) != 3 or self._jwt_key is None:
            raise _OAuthError("invalid_grant", "invalid assertion")
        try:
            header = json.loads(_b64url(parts[0]))
            claims = json.loads(_b64url(parts[1]))
            if header.get("alg") != "RS256" or not isinstance(claims, dict):
                raise ValueError("not an RS256 JWT")
            self._jwt_key.verify(_b64url(parts[2]), f"{parts[0]}.{parts[1]}".encode(), padding.PKCS1v15(),
                                 hashes.SHA256())
        except (ValueError, InvalidSignature, AttributeError):
            raise _OAuthError("invalid_grant", "invalid assertion") from None
        if claims.get("iss") != self.client_id:
            raise _OAuthError("invalid_client_id", "client identifier invalid")
        if claims.get("sub") != self.username:
            raise _OAuthError("invalid_grant", "user hasn't approved this consumer")
        audiences = claims.get("aud")
        audiences = audiences if isinstance(audiences, list) else [audiences]
        # login/test.salesforce.com or a configured Experience Cloud site; never the My Domain URL.
        if not any(isinstance(a, str) and a.rstrip("/") in self.jwt_audiences for a in audiences):
            raise _OAuthError("invalid_grant", "audience is invalid")
        exp = claims.get("exp")
        if not isinstance(exp, int | float) or exp <= time.time():
            raise _OAuthError("invalid_grant", "expired authorization code")

    def _issue_token(self) -> dict[str, Any]:
        token = f"{ORG_ID[:15]}!{secrets.token_urlsafe(48)}"
        issued_at = str(int(time.time() * 1000))
        base_url = self._base_url()
        identity = f"{base_url}/id/{ORG_ID}/{USER_ID}"
        signature = hmac.new(self.client_secret.encode(), (identity + issued_at).encode(), hashlib.sha256).digest()
        with self._records.lock:
            self._tokens[token] = self.clock() + self._records.settings.token_ttl_s
        return {"access_token": token, "instance_url": base_url, "id": identity, "token_type": "Bearer",
                "issued_at": issued_at, "signature": base64.b64encode(signature).decode(), "scope": "api"}

