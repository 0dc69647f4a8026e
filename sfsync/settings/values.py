"""One setting's value: checked and held as sfsync needs it (URLs, CA bundles, header values,
secrets). Every error names the variable and never repeats a secret."""

from __future__ import annotations

import re
import ssl
from pathlib import Path
from urllib.parse import SplitResult, urlsplit

from sfsync.errors import ConfigError
from sfsync.settings.bounds import PORT_MAX


class Secret:
    """A string that never shows itself in repr/str; ``.value`` is the only way in."""

    __slots__ = ("_value",)

    def __init__(self, value: str):
        self._value = value

    @property
    def value(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('***')" if self._value else "Secret('')"

    __str__ = __repr__

    def __bool__(self) -> bool:
        return bool(self._value)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


# An HTTP header name (RFC 9110 token).
HEADER_NAME = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
# A secret sent in an HTTP header: visible ASCII only (headers are read as Latin-1, and trimmed).
HEADER_VALUE = re.compile(r"^[\x21-\x7e]+$")


def check_url(name: str, raw: str) -> str:
    """An https URL with a host, and no user-info, bad port, query or fragment. Errors name the
    variable and never repeat the user-info (it is a password in the wrong place)."""
    try:
        parts = urlsplit(raw)
    except ValueError:
        raise ConfigError(f"{name} is not a valid URL (e.g. https://api.messagemedia.com)") from None
    if parts.scheme.lower() != "https":
        scheme = f"{parts.scheme}://" if parts.scheme else "no scheme"
        raise ConfigError(f"{name} must be an https:// URL (got {scheme}); sfsync never speaks plain HTTP")
    if "@" in parts.netloc:
        raise ConfigError(f"{name} must not carry a user name or password (the part before '@'): sfsync "
                          "never sends credentials in a URL; set them in their own variables")
    shown = f"https://{parts.netloc}" if printable(parts.netloc) else "it"
    if not parts.hostname or not printable(raw) or any(c.isspace() for c in raw):
        raise ConfigError(f"{name}: {shown} is not a valid https URL with a host name")
    if _port(parts) is None:
        raise ConfigError(f"{name}: the port of {shown} must be a whole number from 1 to {PORT_MAX}")
    if parts.query or parts.fragment:
        raise ConfigError(f"{name}: {shown} must have no query (?...) or fragment (#...)")
    return raw.rstrip("/")


def printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _port(parts: SplitResult) -> int | None:
    """The URL's port (443 when none); None when it is not a port."""
    try:
        port = parts.port
    except ValueError:
        return None
    if port is None:
        return None if parts.netloc.endswith(":") else 443
    return port if 1 <= port <= PORT_MAX else None


def check_ca_bundle(name: str, raw: str) -> str:
    """A file of PEM certificates that ``ssl`` can load: checked now, not on the first call."""
    if not raw:
        return raw
    if not Path(raw).is_file():
        raise ConfigError(f"{name}={raw!r}: no such file")
    try:
        ssl.create_default_context(cafile=raw)
    except (ssl.SSLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or type(exc).__name__
        raise ConfigError(f"{name}={raw!r} is not a PEM bundle of CA certificates ({reason}); give the "
                          "PEM file (-----BEGIN CERTIFICATE-----) of the CA that signed the service's certificate"
                          ) from None
    return raw


def check_header_value(name: str, raw: str) -> str:
    """A value sent in an HTTP header (a shared secret, Basic or Bearer credentials, the Account id):
    the error never repeats it."""
    if raw and not HEADER_VALUE.match(raw):
        raise ConfigError(f"{name} must be visible ASCII characters only, without spaces (it travels in an "
                          "HTTP header, where other characters never match); a secret: e.g. $(openssl rand -hex 32)")
    return raw
