"""Which ``wss://`` server certificate the plugin trusts, and what the Backend section shows of it.

Qt-free and Krita-free (tests drive it against real TLS servers). The rules themselves are
``protocol.tls``'s, shared with ``backend.client``; this module adds the plugin's side: a certificate
no authority vouches for is trusted on first use, and only after the artist compared its fingerprint
with the one the server printed and pressed "Trust this certificate". Until then, and whenever a
pinned server shows another certificate, the connection sends nothing (no ``hello``, so no token).
"""

from __future__ import annotations

import importlib
import inspect
import ssl
from dataclasses import dataclass

from .deps import protocol
from .settings import GenerationSettings

tls = importlib.import_module(f"{protocol.__name__}.tls")  # the same copy of protocol as deps chose
CertificateProblem = tls.CertificateProblem
CertificateRefused = tls.CertificateRefused
ServerTrust = tls.ServerTrust


@dataclass(frozen=True)
class Untrusted:
    """A server certificate (or a TLS mismatch) the connection refused before sending anything."""

    url: str
    problem: tls.CertificateProblem
    message: str
    """One line for the artist."""
    fingerprint: str = ""
    """The certificate's SHA-256 fingerprint, when it could be read."""

    @property
    def can_be_trusted(self) -> bool:
        """Nothing vouches for it yet: the artist may confirm its fingerprint."""
        return self.problem is tls.CertificateProblem.UNKNOWN and bool(self.fingerprint)

    @property
    def waits_for_the_artist(self) -> bool:
        """Retrying cannot help until the settings change (like a refused token)."""
        return self.problem is tls.CertificateProblem.CHANGED or self.can_be_trusted


def server_address(url: str) -> str:
    """``host:port`` of a server URL (what a pin is confirmed for), or "" for one that names none."""
    try:
        host, port = tls.address_of(url)
    except ValueError:
        return ""
    return f"{host.lower()}:{port}"


def server_trust(settings: GenerationSettings, url: str | None = None) -> tls.ServerTrust:
    """What a connection to ``url`` (the settings' server by default) trusts: the studio CA file, and
    the pin when it was confirmed for that address (a pin for another server is not this one's)."""
    url = settings.server_url if url is None else url
    address = server_address(url)
    pin = settings.server_pin if address and settings.server_pin_for == address else ""
    try:
        return tls.ServerTrust(settings.server_ca_file.strip(), pin)
    except ValueError:  # a corrupt saved pin: as if none, the artist is asked again
        return tls.ServerTrust(settings.server_ca_file.strip())


def trust_certificate(settings: GenerationSettings, untrusted: Untrusted | None) -> None:
    """Pin the certificate the artist confirmed; ValueError (one line) when there is none to trust."""
    if untrusted is None or not untrusted.can_be_trusted:
        raise ValueError("there is no new server certificate to trust")
    address = server_address(untrusted.url)
    if address != server_address(settings.server_url):
        raise ValueError(f"that certificate was shown by {untrusted.url}, not the server in the settings")
    settings.server_pin = tls.normalize_fingerprint(untrusted.fingerprint)
    settings.server_pin_for = address


def forget_certificate(settings: GenerationSettings) -> None:
    """Trust no pinned certificate any more: the next one is shown to confirm again."""
    settings.server_pin = settings.server_pin_for = ""


def readable_fingerprint(fingerprint: str) -> str:
    """A fingerprint on four lines of 8 bytes: easier to compare with the server's console by eye, and
    narrow enough for a docked docker (a word-wrapped label cannot break one 95-character word)."""
    parts = fingerprint.split(":")
    return "\n".join(":".join(parts[i : i + 8]) for i in range(0, len(parts), 8))


@dataclass(frozen=True)
class TrustView:
    """What the Backend section's certificate rows show; the Qt part only copies it to widgets."""

    shown: bool
    """A ``wss://`` server (or trust settings to change): the rows are visible."""
    line: str
    fingerprint: str = ""
    """In :func:`readable_fingerprint`'s form."""
    can_trust: bool = False
    can_forget: bool = False
    asks: bool = False
    """Only the artist can go on (a certificate to confirm, or a changed one): the section opens."""


def trust_view(settings: GenerationSettings, untrusted: Untrusted | None) -> TrustView:
    address = server_address(settings.server_url)
    pinned = settings.server_pin if address and settings.server_pin_for == address else ""
    shown = tls.is_tls_url(settings.server_url) or bool(pinned or settings.server_ca_file)
    if untrusted is not None and server_address(untrusted.url) == address:
        fingerprint = readable_fingerprint(untrusted.fingerprint) if untrusted.fingerprint else ""
        line = untrusted.message
        if untrusted.can_be_trusted:
            line += "; trust it only if this fingerprint is the one the server printed"
        return TrustView(
            True, line, fingerprint, untrusted.can_be_trusted, bool(pinned), untrusted.waits_for_the_artist
        )
    if pinned:
        return TrustView(
            shown, "trusted certificate (confirmed by you)", readable_fingerprint(pinned), False, True
        )
    if settings.server_ca_file:
        return TrustView(shown, f"certificates signed by the CA in {settings.server_ca_file}")
    return TrustView(shown, "checked against the system's certificate authorities" if shown else "")


# ---------------------------------------------------------------------- the connection's side


def tls_options(url: str, trust: tls.ServerTrust, connect) -> dict[str, ssl.SSLContext]:
    """The keyword that gives websockets' sync ``connect`` the TLS context: ``ssl`` since websockets
    13, ``ssl_context`` in 12 (a websockets Krita already has may be older than the vendored one).
    Empty for ``ws://`` (a context there is an error). Raises ``CertificateRefused`` (bad CA file)."""
    if not tls.is_tls_url(url):
        return {}
    name = "ssl" if "ssl" in inspect.signature(connect).parameters else "ssl_context"
    return {name: trust.context()}


def handshake_failure(error: BaseException, url: str, trust: tls.ServerTrust) -> Untrusted | None:
    """``connect``'s failure as a TLS matter, or None when it is not one (nothing listening, a timeout).
    A certificate nobody vouches for comes with its fingerprint, read in a second, unverified handshake."""
    if not tls.is_tls_url(url):
        from websockets.exceptions import InvalidMessage

        if isinstance(error, InvalidMessage):  # a TLS server hangs up on a plain HTTP request
            return Untrusted(url, tls.CertificateProblem.NOT_TLS, tls.plain_to_tls_hint(url))
        return None
    if not isinstance(error, ssl.SSLError):
        return None
    refused = tls.explain_handshake_failure(error, url, trust)
    if refused.problem is not tls.CertificateProblem.UNKNOWN:
        return Untrusted(url, refused.problem, refused.message, refused.fingerprint)
    try:
        seen = tls.fingerprint(tls.peer_certificate(url))
    except (OSError, ValueError) as unread:
        return Untrusted(
            url, refused.problem, f"{refused.message}; its certificate could not be read ({unread})"
        )
    return Untrusted(url, refused.problem, refused.message, seen)


def check_peer(der: bytes | None, url: str, trust: tls.ServerTrust) -> Untrusted | None:
    """After the handshake, before ``hello``: the pinned certificate and no other (``ws://``: none)."""
    if not tls.is_tls_url(url):
        return None
    try:
        trust.check(der)
    except tls.CertificateRefused as refused:
        # Said without the fingerprints (each one unbreakable word): the section shows the new one.
        line = refused.message
        if refused.fingerprint:
            line = (
                f"the certificate of {url} changed since you trusted it: if its owner replaced it, press "
                "Forget and confirm the new one; otherwise someone may be in between"
            )
        return Untrusted(url, refused.problem, line, refused.fingerprint)
    return None


def peer_der(ws: object) -> bytes | None:
    """The certificate a websockets sync connection's server showed (its ``socket`` since 12)."""
    sock = getattr(ws, "socket", None)
    getpeercert = getattr(sock, "getpeercert", None)
    return getpeercert(binary_form=True) if getpeercert is not None else None
