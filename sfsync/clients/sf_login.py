"""Salesforce OAuth login for ``SalesforceClient``: the token request (client credentials or an RS256
JWT bearer assertion), the JWT audience rules (production, sandbox, Experience Cloud), and what a
refused login tells the admin to fix."""

from __future__ import annotations

import base64
import json
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import requests
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sfsync.clients.retry import parse_retry_after
from sfsync.errors import AuthError, ConfigError, RemoteError
from sfsync.settings.config import Settings

# Token endpoint answers that say the credentials or the connected app are wrong; any other refusal
# (unknown_error "retry your request", a proxy's HTML page, ...) is transient. Salesforce spells a
# wrong consumer key invalid_client_id.
AUTH_ERRORS = {"invalid_grant", "invalid_client", "invalid_client_id", "unauthorized_client", "unsupported_grant_type"}
PRODUCTION_AUDIENCE = "https://login.salesforce.com"
SANDBOX_AUDIENCE = "https://test.salesforce.com"


def jwt_audience(settings: Settings) -> str:
    """The JWT bearer ``aud``: ``SFSYNC_SF_AUDIENCE`` when set, else test.salesforce.com for a
    sandbox login URL and login.salesforce.com for any other (a My Domain ``aud`` is refused)."""
    if settings.sf_audience:
        return settings.sf_audience
    return SANDBOX_AUDIENCE if is_sandbox_host(urlsplit(settings.sf_login_url).hostname or "") else PRODUCTION_AUDIENCE


def is_sandbox_host(host: str) -> bool:
    """Sandbox and scratch org login hosts: test.salesforce.com, enhanced My Domain
    ``acme--uat.sandbox.my.salesforce.com`` (and ``.scratch.``), legacy ``acme--uat.my.salesforce.com``,
    and the old ``csNN.salesforce.com`` instances."""
    host = host.lower().rstrip(".")
    first = host.split(".", 1)[0]
    return (host == "test.salesforce.com" or host.endswith((".sandbox.my.salesforce.com", ".scratch.my.salesforce.com"))
            or ("--" in first and host.endswith(".my.salesforce.com"))
            or (re.fullmatch(r"cs\d+", first) is not None and host.endswith(".salesforce.com")))


@dataclass
class LoginToken:
    instance_url: str
    access_token: str
    identity: str = ""  # the token's id URL, .../id/<org id>/<user id>
    obtained: float = field(default_factory=time.monotonic)


def token_request(s: Settings, session: requests.Session, calls: Counter[str]) -> Callable[[], LoginToken]:
    """One attempt at a token by client credentials or JWT bearer (as ``s`` says); the caller retries it."""
    if s.sf_auth_mode == "jwt":
        data = {"grant_type": "urn:ietf:params:oauth:grant-type:jwt-bearer", "assertion": jwt_assertion(s)}
    else:
        data = {"grant_type": "client_credentials", "client_id": s.sf_client_id,
                "client_secret": s.sf_client_secret.value}

    def once() -> LoginToken:
        calls["token"] += 1
        response = session.post(f"{s.sf_login_url}/services/oauth2/token", data=data,
                                headers={"Accept": "application/json"})
        body = _json_or_none(response)
        error = body.get("error") if isinstance(body, dict) else None
        if response.status_code != 200 and error in AUTH_ERRORS:
            raise login_refused(s, response.status_code, str(error), str(body.get("error_description", "")))
        if response.status_code != 200 or not isinstance(body, dict) or not _usable_token(body):
            # unknown_error ("retry your request"), 5xx, 429, a proxy's HTML page, a garbled grant.
            detail = f"{error}: {body.get('error_description', '')}" if error else (
                "answer is not a token" if response.status_code == 200 else "not an OAuth error answer")
            raise RemoteError(f"Salesforce token endpoint: HTTP {response.status_code} ({detail})", transient=True,
                              status=response.status_code,
                              retry_after=parse_retry_after(response.headers.get("Retry-After")))
        instance = str(body.get("instance_url") or s.sf_instance_url or s.sf_login_url)
        if not instance.startswith("https://"):
            raise ConfigError(f"Salesforce returned a non-https instance URL {instance!r}")
        return LoginToken(instance, str(body["access_token"]), str(body.get("id") or ""))

    return once


def login_refused(s: Settings, status: int, error: str, description: str) -> AuthError:
    """What a refused login tells the admin: for a refused JWT audience, the audience to set."""
    flow = s.sf_auth_mode.replace("_", " ")
    if s.sf_auth_mode == "jwt" and "audience" in description.lower():
        sent = jwt_audience(s)
        if sent in (PRODUCTION_AUDIENCE, SANDBOX_AUDIENCE):
            other, kind = (SANDBOX_AUDIENCE, "a sandbox") if sent == PRODUCTION_AUDIENCE else (
                PRODUCTION_AUDIENCE, "a production org")
            fix = f"If the org is {kind}, set SFSYNC_SF_AUDIENCE={other}"
        else:
            fix = (f"Set SFSYNC_SF_AUDIENCE={PRODUCTION_AUDIENCE} (production org), {SANDBOX_AUDIENCE} (sandbox), "
                   "or your Experience Cloud site's URL")
        return AuthError(f"Salesforce refused the JWT bearer login ({status} {error}: {description}): the JWT's "
                         f"audience was {sent}. {fix} (SFSYNC_SF_LOGIN_URL stays your My Domain URL).")
    return AuthError(
        f"Salesforce refused the {flow} login ({status} {error}: {description}). Check SFSYNC_SF_LOGIN_URL (your "
        "My Domain URL), SFSYNC_SF_CLIENT_ID and the secret or key, and that the connected app allows this flow."
    )


def jwt_assertion(s: Settings) -> str:
    """An RS256 JWT bearer assertion signed with ``SFSYNC_SF_PRIVATE_KEY_FILE``, valid for 3 minutes."""
    try:
        with open(s.sf_private_key_file, "rb") as pem:
            key = serialization.load_pem_private_key(pem.read(), password=None)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"SFSYNC_SF_PRIVATE_KEY_FILE: cannot read an unencrypted PEM private key ({exc})"
        ) from exc
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ConfigError("SFSYNC_SF_PRIVATE_KEY_FILE must hold an RSA private key (JWT bearer uses RS256)")

    def b64(data: bytes) -> str:
        return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

    header = b64(json.dumps({"alg": "RS256", "typ": "JWT"}).encode())
    claims = b64(json.dumps({"iss": s.sf_client_id, "sub": s.sf_username, "aud": jwt_audience(s),
                             "exp": int(time.time()) + 180}).encode())
    signature = key.sign(f"{header}.{claims}".encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{header}.{claims}.{b64(signature)}"


def _usable_token(grant: dict[str, Any]) -> bool:
    """A grant's access token must be non-empty text (``null``, ``""`` or a number is no token)."""
    token = grant.get("access_token")
    return isinstance(token, str) and bool(token.strip())


def _json_or_none(response: requests.Response) -> Any:
    try:
        return response.json()
    except (ValueError, RecursionError):
        return None
