"""What a client trusts of a ``wss://`` server: a studio CA, the system's CAs, or one pinned certificate.

Standard library only: Krita's Python has ``ssl`` on every platform, and the plugin and
``backend.client`` share these rules. It builds the ``ssl.SSLContext`` a caller connects with, then
checks the certificate the server showed before the caller sends anything secret (the token travels
in ``hello``, after the TLS handshake). Its one I/O, :func:`peer_certificate`, reads a certificate
without trusting it, so that a client can show what it would be asked to trust.

A self-signed server is trusted on first use: the client that finds a certificate it cannot verify
shows its SHA-256 fingerprint (the server prints the same on its console), the artist confirms, and
the fingerprint is pinned; a different certificate later is refused until the artist decides again.
"""

from __future__ import annotations

import hashlib
import re
import socket
import ssl
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

FINGERPRINT_BYTES = 32
"""SHA-256."""


class CertificateProblem(str, Enum):
    UNKNOWN = "unknown"
    """Neither the system's CAs nor the studio CA vouch for it, and nothing is pinned: ask the artist."""
    CHANGED = "changed"
    """Not the pinned certificate."""
    INVALID = "invalid"
    """The handshake failed on the certificate itself: expired, another host's, not the CA's."""
    NOT_TLS = "not_tls"
    """One side speaks TLS and the other does not (``wss://`` to a plain port, or the reverse)."""


class CertificateRefused(ValueError):
    """The server's certificate is not trusted; ``message`` is one line for the artist."""

    def __init__(self, problem: CertificateProblem, message: str, fingerprint: str = "") -> None:
        super().__init__(message)
        self.problem = problem
        self.message = message
        self.fingerprint = fingerprint
        """The certificate's SHA-256 fingerprint, when the client saw it."""


def fingerprint(der: bytes) -> str:
    """A certificate's SHA-256 fingerprint as ``openssl x509 -fingerprint -sha256`` prints it."""
    return ":".join(f"{byte:02X}" for byte in hashlib.sha256(der).digest())


def fingerprint_of_pem(pem: str) -> str:
    return fingerprint(ssl.PEM_cert_to_DER_cert(pem))


_PREFIX = re.compile(r"^\s*(sha-?256\s*(fingerprint)?\s*[:=]?)?\s*", re.IGNORECASE)


def normalize_fingerprint(text: str) -> str:
    """A fingerprint typed or pasted in any common form (colons or not, any case, an ``SHA256:``
    or ``sha256 Fingerprint=`` prefix) in the form :func:`fingerprint` returns."""
    digits = re.sub(r"[\s:]", "", _PREFIX.sub("", text, count=1))
    if not re.fullmatch(r"[0-9A-Fa-f]{64}", digits):
        raise ValueError(f"not a SHA-256 fingerprint (64 hexadecimal digits): {text.strip()[:80]!r}")
    return ":".join(digits[i : i + 2].upper() for i in range(0, 64, 2))


def is_tls_url(url: str) -> bool:
    return url.strip().lower().startswith("wss://")


def address_of(url: str) -> tuple[str, int]:
    """A ``ws://`` or ``wss://`` URL's host and port (80 or 443 when it names none)."""
    parts = urlsplit(url.strip())
    host = parts.hostname or ""
    if not host:
        raise ValueError(f"{url} names no host")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"{url} names no valid port") from None
    return host, port or (443 if is_tls_url(url) else 80)


def peer_certificate(url: str, timeout: float = 5.0) -> bytes:
    """The certificate (DER) the server at ``url`` shows, read WITHOUT verifying it: only to show its
    fingerprint to someone who decides. Nothing is sent but the TLS handshake. Raises ``OSError``."""
    host, port = address_of(url)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    with (
        socket.create_connection((host, port), timeout=timeout) as raw,
        context.wrap_socket(raw, server_hostname=host) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    if not der:
        raise ssl.SSLError(f"{url} showed no certificate")
    return der


@dataclass(frozen=True)
class ServerTrust:
    """How a client decides whether a ``wss://`` server is the one it means."""

    ca_file: str = ""
    """A studio's CA certificate (PEM): the server's certificate must be signed by it, for its name."""
    pinned: str = ""
    """A certificate fingerprint confirmed earlier: that certificate and no other (its name and dates
    are not checked: like an SSH host key, it is trusted as the one the user confirmed)."""

    def __post_init__(self) -> None:
        if self.pinned:
            object.__setattr__(self, "pinned", normalize_fingerprint(self.pinned))

    def context(self) -> ssl.SSLContext:
        """The context to connect with. A pin replaces CA verification: the pinned certificate is
        compared by :meth:`check` right after the handshake, before anything is sent."""
        if self.pinned:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        elif self.ca_file:
            try:
                context = ssl.create_default_context(cafile=self.ca_file)
            except (OSError, ssl.SSLError) as error:
                reason = getattr(error, "strerror", None) or error
                raise CertificateRefused(
                    CertificateProblem.INVALID, f"cannot read the CA certificate {self.ca_file}: {reason}"
                ) from None
        else:
            context = ssl.create_default_context()
        context.minimum_version = ssl.TLSVersion.TLSv1_2
        return context

    def check(self, der: bytes | None) -> None:
        """Refuse a certificate other than the pinned one (no-op without a pin: the handshake verified)."""
        if not self.pinned:
            return
        if der is None:
            raise CertificateRefused(CertificateProblem.CHANGED, "the server showed no certificate")
        seen = fingerprint(der)
        if seen != self.pinned:
            raise CertificateRefused(
                CertificateProblem.CHANGED,
                f"the server's certificate changed (SHA-256 {seen}, trusted {self.pinned}): if the "
                "server's owner replaced it, forget the trusted certificate in the settings and confirm "
                "the new one; otherwise someone may be in between",
                seen,
            )


def explain_handshake_failure(error: BaseException, url: str, trust: ServerTrust) -> CertificateRefused:
    """One line for a failed ``wss://`` (or ``ws://``) handshake caused by TLS, by what went wrong."""
    text = str(error)
    if isinstance(error, ssl.SSLCertVerificationError):
        reason = (getattr(error, "verify_message", "") or text).strip()
        lowered = reason.lower()
        if "expired" in lowered:
            return CertificateRefused(
                CertificateProblem.INVALID, f"the server's certificate at {url} has expired ({reason})"
            )
        if "hostname" in lowered or "ip address mismatch" in lowered:
            return CertificateRefused(
                CertificateProblem.INVALID, f"the server's certificate is not for {url} ({reason})"
            )
        if trust.ca_file:
            return CertificateRefused(
                CertificateProblem.INVALID,
                f"the server's certificate at {url} is not signed by the CA in {trust.ca_file} ({reason})",
            )
        return CertificateRefused(
            CertificateProblem.UNKNOWN,
            f"the server's certificate at {url} is not signed by a known authority ({reason}): "
            "confirm its fingerprint to trust it",
        )
    lowered = text.lower()
    if "wrong version number" in lowered or "record layer failure" in lowered or "packet length" in lowered:
        return CertificateRefused(
            CertificateProblem.NOT_TLS, f"{url} does not speak TLS: use ws:// for this server"
        )
    if isinstance(error, ssl.SSLEOFError) or "unexpected eof" in lowered or "eof occurred" in lowered:
        # A plain server reads the ClientHello as a broken HTTP request and hangs up.
        return CertificateRefused(
            CertificateProblem.NOT_TLS,
            f"{url} closed the connection during the TLS handshake: it may not speak TLS (use ws://)",
        )
    return CertificateRefused(CertificateProblem.INVALID, f"TLS with {url} failed: {text}")


def plain_to_tls_hint(url: str) -> str:
    """What to say when a ``ws://`` client reached a TLS port (the server sees garbage; the client an
    invalid HTTP response)."""
    return f"the server at {url} may require TLS: use wss:// instead of ws://"
