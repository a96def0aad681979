"""Ray's own TLS between its processes (``RAY_USE_TLS=1``), checked before ``ray.init``.

With ``RAY_USE_TLS=1`` every Ray process (GCS, raylets, workers, drivers, the Ray Client server)
speaks gRPC over mutual TLS: each serves ``RAY_TLS_SERVER_CERT``/``RAY_TLS_SERVER_KEY``, presents the
same pair as its client certificate, and accepts only peers whose certificate ``RAY_TLS_CA_CERT``
signed. Ray itself reads the files without a check: a missing file crashes the GCS with a hint about
ports in use, and a certificate that is not the CA's, lacks ``clientAuth`` or does not name the
node's IP address makes ``ray.init`` retry for minutes. :func:`problem` says which, in one line.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
from collections.abc import Mapping
from pathlib import Path

FILES = ("RAY_TLS_SERVER_CERT", "RAY_TLS_SERVER_KEY", "RAY_TLS_CA_CERT")


def enabled(environ: Mapping[str, str] = os.environ) -> bool:
    """Whether Ray will use TLS (it reads ``1`` or ``true``, any case)."""
    return environ.get("RAY_USE_TLS", "0").strip().lower() in ("1", "true")


def problem(environ: Mapping[str, str] = os.environ, node_ip: str | None = None) -> str | None:
    """What stops Ray's TLS from working with these files (one line), or None.

    ``node_ip``: the address other Ray processes dial to reach this machine; its certificate must
    name it (gRPC checks the name against the address it dialled). None skips that check (a Ray
    Client, ``ray://``, only dials out)."""
    if not enabled(environ):
        return None
    missing = [name for name in FILES if not environ.get(name, "").strip()]
    if missing:
        return f"RAY_USE_TLS=1 needs {', '.join(FILES)}: {', '.join(missing)} not set"
    paths = {name: Path(environ[name]) for name in FILES}
    for name, path in paths.items():
        try:
            with path.open("rb") as file:
                file.read(1)
        except OSError as error:
            return f"{name}={path}: {error.strerror or type(error).__name__}"
    cert, key, ca = (paths[name] for name in FILES)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    try:
        context.load_cert_chain(cert, key, password=_no_passphrase)
    except _EncryptedKey:
        return f"RAY_TLS_SERVER_KEY={key}: protected by a passphrase, which Ray cannot be given"
    except (ssl.SSLError, OSError) as error:
        return (
            f"RAY_TLS_SERVER_CERT={cert} and RAY_TLS_SERVER_KEY={key}: "
            f"not a PEM certificate and its private key ({getattr(error, 'reason', None) or error})"
        )
    try:
        context.load_verify_locations(cafile=ca)
    except ssl.SSLError as error:
        return f"RAY_TLS_CA_CERT={ca}: not a PEM certificate ({error.reason or error})"
    return _certificate_problem(cert, ca, node_ip)


def _certificate_problem(cert_path: Path, ca_path: Path, node_ip: str | None) -> str | None:
    from cryptography import x509
    from cryptography.x509.oid import ExtendedKeyUsageOID

    try:
        chain = x509.load_pem_x509_certificates(cert_path.read_bytes())
        authorities = x509.load_pem_x509_certificates(ca_path.read_bytes())
    except ValueError as error:
        return f"{cert_path} or {ca_path}: not a PEM certificate ({error})"
    cert, issuers = chain[0], [*authorities, *chain[1:]]
    where = f"RAY_TLS_SERVER_CERT={cert_path}"
    if not any(_issued_by(cert, issuer) for issuer in issuers):
        return (
            f"{where}: not signed by RAY_TLS_CA_CERT={ca_path}; "
            "every node needs a certificate from the same CA"
        )
    now = datetime.datetime.now(datetime.timezone.utc)
    if cert.not_valid_after_utc < now:
        return f"{where}: expired on {cert.not_valid_after_utc:%Y-%m-%d}"
    if cert.not_valid_before_utc > now:
        return f"{where}: not valid before {cert.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
    try:
        usages = cert.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    except x509.ExtensionNotFound:
        usages = None
    if usages is not None and not {
        ExtendedKeyUsageOID.SERVER_AUTH,
        ExtendedKeyUsageOID.CLIENT_AUTH,
    } <= set(usages):
        return (
            f"{where}: its extended key usage must allow both serverAuth and clientAuth "
            "(every Ray process is a TLS server and a TLS client of the others)"
        )
    if node_ip is not None and not _names(cert, node_ip):
        return (
            f"{where}: does not name this node's address {node_ip} "
            "(other Ray processes dial it and check the name); add it to the subject alternative names"
        )
    return None


def _issued_by(cert, issuer) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except Exception:  # ValueError (the issuer's name), InvalidSignature, TypeError (its key type)
        return False
    return True


def _names(cert, address: str) -> bool:
    from cryptography import x509

    try:
        names = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address.lower() in (name.lower() for name in names.get_values_for_type(x509.DNSName))
    return ip in names.get_values_for_type(x509.IPAddress) or address in names.get_values_for_type(
        x509.DNSName
    )


class _EncryptedKey(Exception):
    pass


def _no_passphrase() -> bytes:
    raise _EncryptedKey
