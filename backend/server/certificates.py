"""``serve --tls self-signed``: a certificate for this host's names, made once and kept.

Clients pin a self-signed certificate's fingerprint on first use, so a new certificate at every start
would make every artist confirm again (and teach them to confirm blindly). The certificate is
therefore kept in a folder and reused; it is replaced only when it has expired, expires within
``RENEW_DAYS``, cannot be read, or no longer covers exactly the names and addresses it must.
ECDSA P-256 (small, fast, accepted by every TLS library), made with ``cryptography``.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import logging
import os
import socket
import ssl
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from protocol.tls import fingerprint

from .config import ConfigError

log = logging.getLogger(__name__)

VALID_DAYS = 365
RENEW_DAYS = 30
"""Renewed this long before it expires: a client never meets an expired one from a running server."""
CERT_FILE = "server.crt"
KEY_FILE = "server.key"
MAX_NAMES = 64
"""Names and addresses in one certificate (a host with many addresses gets the first ones)."""


class Renewal(str, Enum):
    KEPT = "kept"
    CREATED = "created"
    EXPIRING = "expiring"
    NAMES_CHANGED = "names changed"
    UNREADABLE = "unreadable"


@dataclass(frozen=True)
class SelfSigned:
    cert: Path
    key: Path
    fingerprint: str
    outcome: Renewal
    names: tuple[str, ...]


def default_tls_dir() -> Path:
    """``$XDG_DATA_HOME/instantstyle/tls``, else ``~/.local/share/instantstyle/tls``."""
    base = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(base) / "instantstyle" / "tls"


def _is_wildcard(host: str) -> bool:
    with contextlib.suppress(ValueError):
        return ipaddress.ip_address(host).is_unspecified
    return host in ("", "*")


def host_names(bind_host: str) -> tuple[str, ...]:
    """What clients may call this server: the bind host (unless a wildcard), the host name, its FQDN,
    the addresses the host name resolves to, and loopback's names. Sorted, lower case, bounded."""
    names = {"localhost", "127.0.0.1", "::1"}
    if not _is_wildcard(bind_host):
        names.add(bind_host)
    hostname = socket.gethostname()
    for name in (hostname, socket.getfqdn()):
        if name:
            names.add(name)
    with contextlib.suppress(OSError, UnicodeError):
        for info in socket.getaddrinfo(hostname, None):
            names.add(str(info[4][0]).split("%")[0])  # an IPv6 scope (fe80::1%eth0) is no name
    canonical = {_canonical(name) for name in names if name}
    return tuple(sorted(canonical - {""})[:MAX_NAMES])


def _canonical(name: str) -> str:
    """An address in its standard form, a DNS name in lower-case ASCII (IDNA); "" for a name no
    certificate can carry (a host name with characters IDNA refuses)."""
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    text = name.strip().lower().rstrip(".")
    try:
        return text.encode("idna").decode("ascii")
    except UnicodeError:
        return ""


def _alternative(name: str):
    from cryptography import x509

    try:
        return x509.IPAddress(ipaddress.ip_address(name))
    except ValueError:
        return x509.DNSName(name)


def _covered(cert) -> tuple[str, ...]:
    from cryptography import x509

    try:
        sans = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return ()
    names = [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    names += [_canonical(dns) for dns in sans.get_values_for_type(x509.DNSName)]
    return tuple(sorted(names))


def ensure_self_signed(
    folder: Path,
    names: tuple[str, ...],
    now: datetime.datetime | None = None,
    required: tuple[str, ...] = (),
) -> SelfSigned:
    """The kept certificate in ``folder`` unless it is near its end, unreadable, or misses one of the
    ``required`` names (the address the server was told to bind); else a new one for ``names`` (the key
    file readable by its owner only).

    The other names may drift (DHCP, a VPN, IPv6 privacy addresses) without a new certificate: clients
    pin its fingerprint and do not check names, and every new certificate is a "changed certificate"
    warning to every artist, which would teach them to click it away."""
    now = now or datetime.datetime.now(datetime.timezone.utc)
    wanted = tuple(sorted({_canonical(name) for name in names} - {""}))
    needed = tuple(sorted({_canonical(name) for name in required} - {""}))
    cert_path, key_path = folder / CERT_FILE, folder / KEY_FILE
    outcome = _why_renew(cert_path, key_path, needed, now)
    if outcome is not Renewal.KEPT:
        _create(folder, wanted, now)
        log.info("made a self-signed TLS certificate in %s (%s)", folder, outcome.value)
    from cryptography import x509

    covered = _covered(x509.load_pem_x509_certificate(cert_path.read_bytes()))
    return SelfSigned(cert_path, key_path, certificate_fingerprint(cert_path), outcome, covered)


def _why_renew(cert_path: Path, key_path: Path, needed: tuple[str, ...], now: datetime.datetime) -> Renewal:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import load_pem_private_key

    if not cert_path.exists() and not key_path.exists():
        return Renewal.CREATED
    try:
        cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
        key = load_pem_private_key(key_path.read_bytes(), password=None)
    except (OSError, ValueError, TypeError):
        return Renewal.UNREADABLE
    if cert.public_key().public_numbers() != key.public_key().public_numbers():  # type: ignore[union-attr]
        return Renewal.UNREADABLE
    remaining = cert.not_valid_after_utc - now
    if remaining < datetime.timedelta(days=RENEW_DAYS) or cert.not_valid_before_utc > now:
        return Renewal.EXPIRING
    if not set(needed) <= set(_covered(cert)):
        return Renewal.NAMES_CHANGED
    return Renewal.KEPT


def _create(folder: Path, names: tuple[str, ...], now: datetime.datetime) -> None:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    if not names:
        raise ConfigError("a self-signed certificate needs at least one name")
    try:
        folder.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as error:
        raise ConfigError(f"cannot create the TLS folder {folder}: {error.strerror or error}") from None
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"InstantStyle server {names[0]}"[:64])])
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))  # a client whose clock is a little behind
        .not_valid_after(now + datetime.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName([_alternative(n) for n in names]), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    try:
        _write(folder / KEY_FILE, key_pem, 0o600)
        _write(folder / CERT_FILE, cert.public_bytes(serialization.Encoding.PEM), 0o644)
    except OSError as error:
        reason = error.strerror or error
        raise ConfigError(f"cannot write the TLS certificate in {folder}: {reason}") from None


def _write(path: Path, data: bytes, mode: int) -> None:
    """Written to a temporary file created with ``mode`` (never briefly readable by others), then
    renamed over ``path``: a crash leaves the old file or the new, not half of one."""
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        with os.fdopen(descriptor, "wb") as file:
            if hasattr(os, "fchmod"):  # the umask may have narrowed it; Windows has no modes
                os.fchmod(file.fileno(), mode)
            file.write(data)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise


def certificate_fingerprint(cert_file: str | Path) -> str:
    """The SHA-256 fingerprint of the first certificate in a PEM file (what clients pin)."""
    text = Path(cert_file).read_text()
    end = "-----END CERTIFICATE-----"
    start = text.find("-----BEGIN CERTIFICATE-----")
    first = text[max(start, 0) : text.index(end) + len(end)] if end in text else text
    return fingerprint(ssl.PEM_cert_to_DER_cert(first))
