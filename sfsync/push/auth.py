"""Authentication of MessageMedia's pushed delivery reports, as pure functions.

Two methods, either or both configured:

- a shared secret in a static header (account webhooks can send custom headers), compared in
  constant time;
- MessageMedia's RSA signature (signed callbacks): ``X-MessageMedia-Signature`` is base64 of an
  RSA PKCS#1 v1.5 signature, with the digest named by ``X-MessageMedia-Digest-Type``, over the
  request line (``POST /path HTTP/1.1``), the ``Date`` value and the raw body, concatenated with
  no separator. ``Date`` must be within a bound of our clock, so a captured call cannot be
  replayed later (within the bound a replay is harmless: reports are stored once by id).
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hmac
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from sfsync.errors import ConfigError
from sfsync.settings.config import Settings

SIGNATURE_HEADER = "X-MessageMedia-Signature"
DIGEST_HEADER = "X-MessageMedia-Digest-Type"
CIPHER_HEADER = "X-MessageMedia-Cipher-Type"
KEY_ID_HEADER = "X-MessageMedia-Key-Id"

# Digest names as MessageMedia writes them (SHA224, SHA-512, ...), without dashes, upper case.
DIGESTS: dict[str, Callable[[], hashes.HashAlgorithm]] = {
    "SHA1": hashes.SHA1, "SHA224": hashes.SHA224, "SHA256": hashes.SHA256,
    "SHA384": hashes.SHA384, "SHA512": hashes.SHA512,
}
_PEM_BLOCK = re.compile(rb"-----BEGIN ([A-Z ]+)-----.+?-----END \1-----", re.DOTALL)

HeaderGetter = Callable[[str], str | None]


class AuthFailed(Exception):
    """A call that is not authenticated; ``reason`` is safe to log and to answer with."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


# -- the pieces -----------------------------------------------------------------------------------------
def secret_matches(given: str | None, expected: str) -> bool:
    """Constant-time comparison (as bytes: compare_digest refuses non-ASCII str)."""
    if given is None or not expected:
        return False
    return hmac.compare_digest(given.strip().encode(), expected.encode())


def signed_data(request_line: str, date: str, body: bytes) -> bytes:
    return request_line.encode("latin-1") + date.encode("latin-1") + body


def digest_named(name: str | None) -> hashes.HashAlgorithm:
    key = (name or "").replace("-", "").replace("_", "").strip().upper()
    if key not in DIGESTS:
        raise AuthFailed(f"unsupported {DIGEST_HEADER} {name!r}")
    return DIGESTS[key]()


def check_date(value: str | None, now: dt.datetime, max_skew_seconds: float) -> dt.datetime:
    """The Date header, which must be within ``max_skew_seconds`` of ``now`` either way."""
    if not value:
        raise AuthFailed("missing Date header")
    try:
        sent = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise AuthFailed("unreadable Date header") from None
    if sent.tzinfo is None:
        sent = sent.replace(tzinfo=dt.UTC)
    if not abs((now - sent).total_seconds()) <= max_skew_seconds:  # so a nan bound refuses, never accepts
        raise AuthFailed(f"Date is more than {max_skew_seconds:g} s from our clock (replayed or clock skew)")
    return sent


def verify_signature(keys: Iterable[rsa.RSAPublicKey], data: bytes, signature_b64: str | None,
                     digest_name: str | None, cipher: str | None) -> None:
    """Raise ``AuthFailed`` unless one of ``keys`` made ``signature_b64`` over ``data``."""
    if not signature_b64:
        raise AuthFailed(f"missing {SIGNATURE_HEADER}")
    if (cipher or "RSA").strip().upper() != "RSA":
        raise AuthFailed(f"unsupported {CIPHER_HEADER} {cipher!r}")
    digest = digest_named(digest_name)
    try:
        signature = base64.b64decode(signature_b64.strip(), validate=True)
    except (binascii.Error, ValueError):
        raise AuthFailed(f"{SIGNATURE_HEADER} is not base64") from None
    for key in keys:
        try:
            key.verify(signature, data, padding.PKCS1v15(), digest)
            return
        except InvalidSignature:
            continue
    raise AuthFailed("bad signature")


def load_public_keys(content: bytes, source: str = "the key file") -> list[rsa.RSAPublicKey]:
    """RSA public keys from PEM (``PUBLIC KEY``, ``RSA PUBLIC KEY`` or ``CERTIFICATE`` blocks, one or
    more: several keys allow a rotation without downtime), or the bare base64 DER that
    MessageMedia returns as ``public_key`` in the answer to ``POST /v1/iam/signature_keys`` (only
    there: list and get never carry it; ``sfsync webhooks signing-key`` writes it as PEM)."""
    keys: list[object] = []
    try:
        blocks = [m.group(0) for m in _PEM_BLOCK.finditer(content)]
        for block in blocks:
            if b"CERTIFICATE" in block.split(b"\n", 1)[0]:
                keys.append(x509.load_pem_x509_certificate(block).public_key())
            else:
                keys.append(serialization.load_pem_public_key(block))
        if not blocks:
            der = base64.b64decode(b"".join(content.split()), validate=True)
            keys.append(serialization.load_der_public_key(der))
    except (ValueError, binascii.Error, UnsupportedAlgorithm) as exc:
        raise ConfigError(f"{source} holds no readable public key ({exc})") from exc
    rsa_keys = [k for k in keys if isinstance(k, rsa.RSAPublicKey)]
    if not rsa_keys or len(rsa_keys) != len(keys):
        raise ConfigError(f"{source}: MessageMedia signs with RSA; every key in the file must be an RSA key")
    return rsa_keys


# -- the policy -----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PushAuth:
    secret_header: str = "X-SFSync-Secret"  # noqa: S105 - a header name
    secret: str = ""
    public_keys: tuple[rsa.RSAPublicKey, ...] = ()
    mode: str = "all"  # with both methods configured: all must pass, or any one
    max_skew_seconds: float = 300.0

    @classmethod
    def from_settings(cls, settings: Settings) -> PushAuth:
        keys: tuple[rsa.RSAPublicKey, ...] = ()
        if settings.push_public_key_file:
            path = Path(settings.push_public_key_file)
            try:
                content = path.read_bytes()
            except OSError as exc:
                raise ConfigError(f"SFSYNC_PUSH_PUBLIC_KEY_FILE: cannot read {path} ({exc})") from exc
            keys = tuple(load_public_keys(content, f"SFSYNC_PUSH_PUBLIC_KEY_FILE {path}"))
        auth = cls(settings.push_secret_header, settings.push_secret.value, keys, settings.push_auth_mode,
                   settings.push_max_skew_seconds)
        if not auth.methods:
            raise ConfigError(
                "push needs authentication: set SFSYNC_PUSH_SECRET (a shared secret MessageMedia sends in the "
                "SFSYNC_PUSH_SECRET_HEADER header) and/or SFSYNC_PUSH_PUBLIC_KEY_FILE (to verify MessageMedia's "
                "signed callbacks)"
            )
        return auth

    @property
    def methods(self) -> tuple[str, ...]:
        return tuple(m for m, on in (("secret", bool(self.secret)), ("signature", bool(self.public_keys))) if on)

    def check(self, method: str, target: str, header: HeaderGetter, body: bytes, *,
              versions: Iterable[str] = ("HTTP/1.1",), now: dt.datetime | None = None) -> tuple[str, ...]:
        """The methods that passed; ``AuthFailed`` (with every failing reason) when the call is
        not authenticated under ``mode``."""
        passed: list[str] = []
        failed: list[str] = []
        for name in self.methods:
            try:
                if name == "secret":
                    if not secret_matches(header(self.secret_header), self.secret):
                        raise AuthFailed(f"missing or wrong {self.secret_header} header")
                else:
                    self._check_signature(method, target, header, body, versions, now or dt.datetime.now(dt.UTC))
            except AuthFailed as exc:
                failed.append(exc.reason)
                continue
            passed.append(name)
        if not passed or (self.mode == "all" and failed):
            raise AuthFailed("; ".join(failed) or "not authenticated")
        return tuple(passed)

    def _check_signature(self, method: str, target: str, header: HeaderGetter, body: bytes,
                         versions: Iterable[str], now: dt.datetime) -> None:
        date = header("Date")
        check_date(date, now, self.max_skew_seconds)
        assert date is not None
        failure: AuthFailed | None = None
        # MessageMedia signs "POST /path HTTP/1.1"; a proxy may speak another version to us.
        for version in dict.fromkeys(versions):
            data = signed_data(f"{method} {target} {version}", date, body)
            try:
                verify_signature(self.public_keys, data, header(SIGNATURE_HEADER), header(DIGEST_HEADER),
                                 header(CIPHER_HEADER))
                return
            except AuthFailed as exc:
                failure = exc
        raise failure or AuthFailed("bad signature")
