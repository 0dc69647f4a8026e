"""`sfsync webhooks install|list|remove`: the account webhook that pushes delivery reports to `sfsync serve`.

The webhook's template renders each delivery report as the JSON object `sfsync serve` accepts:
the fields of a polled report plus ``error_code`` from ``$statusCode``. MessageMedia renders
templates with Velocity, which inserts values as they are: every value is therefore wrapped in
``$esc.json(...)`` (the escaping form MessageMedia documents for JSON templates), so a quote or
backslash in a metadata value cannot break the JSON. Metadata is read with
``$metadata.get('key')`` for the Task Id key; a bare ``$metadata`` would render a Java map
(``{k=v}``), not JSON. A variable with no value is left unrendered
(``"$esc.json($statusCode)"``); the server drops such fields.

MessageMedia's limits on the other fields are checked before anything is sent: ``read_timeout``
in milliseconds (at most 60000; the API's default is 20000), ``retry_delay`` 5 to 60 seconds.

`sfsync webhooks signing-key` creates a signature key (``POST /v1/iam/signature_keys``: the only
answer that ever carries the public key, in ``public_key``), enables it (``PATCH
/v1/iam/signature_keys/enabled``: one key is enabled at a time, so the previous one stops
signing) and writes the public key as PEM for ``SFSYNC_PUSH_PUBLIC_KEY_FILE``.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from sfsync.clients.messagemedia import WEBHOOK_EVENTS
from sfsync.errors import ConfigError, RemoteError, UsageError
from sfsync.settings.config import Settings

# MessageMedia's bounds for a webhook (POST /v1/webhooks/messages).
READ_TIMEOUT_MS = (1, 60_000)
RETRY_DELAY_S = (5, 60)
SIGNATURE_DIGESTS = ("SHA224", "SHA256", "SHA512")

_METADATA_KEY = re.compile(r"^[A-Za-z0-9_.:-]{1,100}$")  # safe inside the template's JSON and Velocity quoting


def dr_template(task_key: str) -> str:
    """The Velocity template: a JSON delivery report, one per event."""
    if not _METADATA_KEY.match(task_key):
        raise UsageError(f"SFSYNC_METADATA_TASK_KEY {task_key!r} cannot be used in a webhook template")
    fields = {
        "delivery_report_id": _escaped("$drId"),
        "message_id": _escaped("$messageId"),
        "status": _escaped("$status"),
        "error_code": _escaped("$statusCode"),
        "submitted_date": _escaped("$submittedTimestamp"),
        "date_received": _escaped("$receivedTimestamp"),
        "source_number": _escaped("$sourceAddress"),
        # The account the report belongs to, as polled reports carry it ($vendorId, $accountId: the
        # spec's template variables): a sub-account's pushes keep their account in the store.
        "vendor_account_id": {"vendor_id": _escaped("$vendorId"), "account_id": _escaped("$accountId")},
        "metadata": {task_key: _escaped(f"$metadata.get('{task_key}')")},
    }
    return json.dumps(fields, separators=(",", ":"))


def _escaped(reference: str) -> str:
    """A Velocity reference whose value is JSON-escaped when rendered."""
    return f"$esc.json({reference})"


def check_url(url: str) -> str:
    """An absolute https URL with a host and a valid port: reports carry phone numbers and the push
    carries the shared secret. A user name or password in it is refused (and never echoed)."""
    try:
        parts = urlsplit(url)
        port_ok = parts.port != 0
    except ValueError:
        parts, port_ok = urlsplit(""), False
    if "@" in parts.netloc:
        raise UsageError("--url must not carry a user name or password (the part before '@'); "
                         "'sfsync serve' authenticates pushes by SFSYNC_PUSH_SECRET or signatures")
    if parts.scheme != "https" or not parts.hostname or not port_ok:
        raise UsageError("--url must be an absolute https:// URL with a host and a valid port, path included")
    return url


def check_bounds(*, read_timeout: int, retries: int, retry_delay: int) -> None:
    """MessageMedia's limits, checked before anything is sent."""
    low, high = READ_TIMEOUT_MS
    if not low <= read_timeout <= high:
        raise UsageError(f"--read-timeout is in milliseconds, {low} to {high} (got {read_timeout})")
    if retries < 0:
        raise UsageError(f"--retries must be 0 or more (got {retries})")
    low, high = RETRY_DELAY_S
    if not low <= retry_delay <= high:
        raise UsageError(f"--retry-delay is in seconds, {low} to {high} (got {retry_delay})")


def webhook_body(settings: Settings, url: str, *, secret: str | None = None, read_timeout: int = 5000,
                 retries: int = 5, retry_delay: int = 30) -> dict[str, Any]:
    """The ``POST /v1/webhooks/messages`` body for the six delivery report events."""
    secret = settings.push_secret.value if secret is None else secret
    check_bounds(read_timeout=read_timeout, retries=retries, retry_delay=retry_delay)
    return {
        "url": check_url(url),
        "method": "POST",
        "encoding": "JSON",
        "headers": {settings.push_secret_header: secret} if secret else {},
        "events": list(WEBHOOK_EVENTS),
        "template": dr_template(settings.metadata_task_key),
        "read_timeout": read_timeout,
        "retries": retries,
        "retry_delay": retry_delay,
    }


def redacted(hook: dict[str, Any]) -> dict[str, Any]:
    from sfsync.logs import redact_urls

    headers = hook.get("headers")
    if isinstance(headers, dict):
        hook = {**hook, "headers": {k: "***" for k in headers}}
    if isinstance(hook.get("url"), str):  # a webhook made elsewhere may carry a password in its URL
        hook = {**hook, "url": redact_urls(hook["url"])}
    return hook


# -- signature keys ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SigningKey:
    key_id: str
    digest: str
    pem: bytes  # the public key, PEM "PUBLIC KEY"


def public_key_pem(public_key_b64: Any) -> bytes:
    """The ``public_key`` of a create answer (base64 DER SubjectPublicKeyInfo) as a PEM block."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    if not isinstance(public_key_b64, str) or not public_key_b64.strip():
        raise RemoteError("MessageMedia signature key: the create answer has no public_key", transient=False)
    try:
        key = serialization.load_der_public_key(base64.b64decode(public_key_b64.strip(), validate=True))
    except (ValueError, binascii.Error) as exc:
        raise RemoteError(f"MessageMedia signature key: public_key is not a readable key ({exc})",
                          transient=False) from exc
    if not isinstance(key, rsa.RSAPublicKey):
        raise RemoteError("MessageMedia signature key: public_key is not an RSA key", transient=False)
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def create_signing_key(client: Any, digest: str) -> SigningKey:
    """Create a key (not yet enabled). Only this answer ever carries the public key."""
    created = client.create_signature_key(digest=digest, cipher="RSA")
    key_id = created.get("key_id")
    if not isinstance(key_id, str) or not key_id:
        raise RemoteError("MessageMedia signature key: the create answer has no key_id", transient=False)
    return SigningKey(key_id, str(created.get("digest") or digest), public_key_pem(created.get("public_key")))


def write_public_key(path: Path, pem: bytes, *, append: bool) -> None:
    """Write (or append) atomically: a half-written key file would stop `sfsync serve` verifying."""
    existing = b""
    if append and path.exists():
        try:
            existing = path.read_bytes().rstrip() + b"\n"
        except OSError as exc:
            raise ConfigError(f"cannot read {path} ({exc})") from exc
    from sfsync.ops.files import write_replacing

    try:  # a new file taking the name: never written through a link (nor a planted path.tmp)
        path.parent.mkdir(parents=True, exist_ok=True)
        write_replacing(path, existing + pem, "the public key file", refuse=False)
    except OSError as exc:
        raise ConfigError(f"cannot write the public key to {path} ({exc})") from exc
