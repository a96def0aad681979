"""Ray's own TLS between its processes (``RAY_USE_TLS=1``, docs/SCALING.md), on a real local Ray.

A Ray started with a studio CA's node certificate runs a task; while it runs, its GCS, raylet and
object manager ports answer HTTP/2 (gRPC) only over mutual TLS with that CA's certificates: plain
text, TLS without a client certificate and TLS with another CA's certificate get no HTTP/2 answer,
and a client that trusts only another CA refuses the node. A second Ray process with the same files
reaches the GCS. Before Ray starts, ``serve --ray local`` says in one line what is wrong with the
files (Ray itself crashes its GCS or retries for minutes). Every Ray process started here is gone
afterwards (tests/test_ray_pool.py counts raylets and GCS servers)."""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import os
import selectors
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from backend.server import ray_tls
from tests.tls_certs import make_ca, make_server_cert

REPO = Path(__file__).resolve().parent.parent
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
"""HTTP/2's client preface and an empty SETTINGS frame: a gRPC server answers with its SETTINGS."""
START_SECONDS = 90.0

DRIVER = """
import json, sys
import ray

ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False, configure_logging=False,
         _temp_dir=sys.argv[1])

@ray.remote
def double(x):
    return 2 * x

node = ray.nodes()[0]
print(json.dumps({
    "result": ray.get(double.remote(21), timeout=60),
    "gcs": ray.get_runtime_context().gcs_address,
    "ip": node["NodeManagerAddress"],
    "raylet": node["NodeManagerPort"],
    "objects": node["ObjectManagerPort"],
}), flush=True)
sys.stdin.read()  # the cluster stays up until the test closes stdin
ray.shutdown()
"""


def node_ip() -> str:
    """The address a local Ray's processes dial each other on (what ray.init picks)."""
    from ray._private.services import get_node_ip_address

    return get_node_ip_address()


def make_node_cert(folder: Path, stem: str, names: tuple[str, ...], ca) -> tuple[Path, Path]:
    """A node certificate as Ray needs it: signed by the studio CA, for serverAuth and clientAuth
    (each Ray process is both), naming every address peers dial."""
    ca_cert, ca_key = ca
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.timezone.utc)
    alternatives: list[x509.GeneralName] = []
    for name in names:
        try:
            alternatives.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            alternatives.append(x509.DNSName(name))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"ray node {stem}")]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .add_extension(x509.SubjectAlternativeName(alternatives), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )
    cert_path, key_path = folder / f"{stem}.crt", folder / f"{stem}.key"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


@dataclass(frozen=True)
class Pki:
    folder: Path
    ca: Path
    cert: Path
    key: Path
    other_ca: Path
    other_cert: Path
    other_key: Path
    ca_pair: tuple
    node_ip: str

    def env(self, cert: Path | None = None, key: Path | None = None, ca: Path | None = None) -> dict:
        return {
            "RAY_USE_TLS": "1",
            "RAY_TLS_SERVER_CERT": str(cert or self.cert),
            "RAY_TLS_SERVER_KEY": str(key or self.key),
            "RAY_TLS_CA_CERT": str(ca or self.ca),
        }


@pytest.fixture(scope="module")
def pki():
    # Short: Ray's sockets live under its temp dir, and a Unix socket's path has at most 107 bytes.
    folder = Path(tempfile.mkdtemp(prefix="rtls", dir="/tmp"))
    try:
        ca, ca_cert, ca_key = make_ca(folder / "studio")
        ip = node_ip()
        cert, key = make_node_cert(folder, "node", ("localhost", "127.0.0.1", ip), (ca_cert, ca_key))
        other, other_cert, other_key = make_ca(folder / "other")
        stranger = make_node_cert(folder, "stranger", ("localhost", "127.0.0.1", ip), (other_cert, other_key))
        yield Pki(folder, ca.cert, cert, key, other.cert, *stranger, (ca_cert, ca_key), ip)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def child_env(pki: Pki, extra: dict) -> dict:
    """This environment without any Ray TLS setting of its own, plus ``extra``; HOME in the temp
    folder keeps the token a local Ray writes (~/.ray/auth_token) out of the real home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_USE_TLS", "RAY_TLS_"))}
    return {**env, "HOME": str(pki.folder / "home"), "PYTHONPATH": str(REPO), **extra}


def ray_pids(temp_dir: Path) -> list[int]:
    """Processes of the Ray whose temp dir is ``temp_dir`` (its path is on their command lines)."""
    found = subprocess.run(["pgrep", "-f", str(temp_dir)], capture_output=True, text=True)
    return [int(pid) for pid in found.stdout.split() if int(pid) != os.getpid()]


def read_line(stream, seconds: float) -> str:
    selector = selectors.DefaultSelector()
    selector.register(stream, selectors.EVENT_READ)
    try:
        return stream.readline() if selector.select(seconds) else ""
    finally:
        selector.close()


def tail(path: Path, lines: int = 6) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@contextlib.contextmanager
def tls_cluster(pki: Pki):
    """A local Ray in a child process with the studio's TLS files; yields what its driver printed."""
    temp_dir = pki.folder / "ray"
    log = pki.folder / "driver.log"
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER, str(temp_dir)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=log.open("w"),
        text=True,
        env=child_env(pki, pki.env()),
        start_new_session=True,
    )
    try:
        line = read_line(driver.stdout, START_SECONDS)
        gcs_log = next(temp_dir.glob("session_*/logs/gcs_server.err"), Path("-"))
        assert line, f"Ray with TLS did not run its task:\n{tail(log)}\n{tail(gcs_log)}"
        yield json.loads(line)
    finally:
        with contextlib.suppress(OSError):
            driver.stdin.close()  # the driver shuts its Ray down
        try:
            driver.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
        deadline = time.monotonic() + 30
        while ray_pids(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = ray_pids(temp_dir)
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        assert not left, f"Ray processes left running after ray.shutdown(): {left}"


@dataclass(frozen=True)
class Answer:
    http2: bool
    """The server answered the preface with an HTTP/2 SETTINGS frame."""
    detail: str
    peer_der: bytes | None = None
    alpn: str | None = None


def speak_http2(host: str, port: int, context: ssl.SSLContext | None) -> Answer:
    """Send HTTP/2's preface (over TLS with ``context``, else in plain text); what came back."""
    with socket.create_connection((host, port), timeout=10) as raw:
        stream = raw
        peer = alpn = None
        if context is not None:
            stream = context.wrap_socket(raw, server_hostname=host)  # raises on a refused server
            peer, alpn = stream.getpeercert(binary_form=True), stream.selected_alpn_protocol()
        try:
            stream.sendall(PREFACE)
            header = b""
            while len(header) < 9:
                chunk = stream.recv(9 - len(header))
                if not chunk:
                    break
                header += chunk
        except (OSError, ssl.SSLError) as error:  # the server's alert: no or a foreign certificate
            return Answer(False, f"{type(error).__name__}: {error}", peer, alpn)
        return Answer(len(header) == 9 and header[3] == 0x04, f"read {header!r}", peer, alpn)


def client_context(trust: Path, cert: Path | None = None, key: Path | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(trust))
    context.set_alpn_protocols(["h2"])
    if cert is not None:
        context.load_cert_chain(cert, key)
    return context


def test_ray_with_tls_runs_a_task_and_its_ports_speak_only_mutual_tls_with_the_studio_ca(pki):
    started = time.monotonic()
    with tls_cluster(pki) as cluster:
        assert cluster["result"] == 42
        host, gcs_port = cluster["gcs"].rsplit(":", 1)
        assert host == cluster["ip"] == pki.node_ip  # the address the node certificate must name
        studio = client_context(pki.ca, pki.cert, pki.key)
        node_der = x509.load_pem_x509_certificate(pki.cert.read_bytes()).public_bytes(
            serialization.Encoding.DER
        )
        for name, port in (
            ("GCS", int(gcs_port)),
            ("raylet", cluster["raylet"]),
            ("objects", cluster["objects"]),
        ):
            good = speak_http2(host, port, studio)
            assert good.http2, f"{name} port {port} with the studio's certificate: {good.detail}"
            assert good.peer_der == node_der and good.alpn == "h2", name
            plain = speak_http2(host, port, None)
            assert not plain.http2, f"{name} port {port} answered HTTP/2 in plain text"
            anonymous = speak_http2(host, port, client_context(pki.ca))
            assert not anonymous.http2, f"{name} port {port} answered a client without a certificate"
            foreign = speak_http2(host, port, client_context(pki.ca, pki.other_cert, pki.other_key))
            assert not foreign.http2, f"{name} port {port} answered another CA's certificate"
            with pytest.raises(ssl.SSLCertVerificationError):  # the node is the studio's, not theirs
                speak_http2(host, port, client_context(pki.other_ca, pki.other_cert, pki.other_key))
        # Another Ray process with the same files reaches the GCS (and gets the token check behind
        # TLS: the token a local Ray made is in the temp HOME).
        check = subprocess.run(
            [sys.executable, "-m", "ray.scripts.scripts", "health-check", "--address", cluster["gcs"]],
            env=child_env(pki, {**pki.env(), "RAY_AUTH_MODE": "token"}),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert check.returncode == 0, check.stderr[-2000:]
    print(f"TLS cluster test: {time.monotonic() - started:.1f} s")


def test_serve_with_ray_and_a_missing_tls_file_says_so_in_one_line_before_ray_starts(pki):
    missing = pki.folder / "missing.crt"
    served = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend",
            "serve",
            "--port",
            "0",
            "--no-warm-up",
            "--ray",
            "local",
            "--device",
            "cpu",
        ],
        env=child_env(pki, {**pki.env(cert=missing), "HF_HUB_OFFLINE": "1"}),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert served.returncode == 2, served.stderr[-2000:]
    lines = served.stderr.strip().splitlines()
    assert lines == [
        f"error: Ray's TLS (RAY_USE_TLS=1): RAY_TLS_SERVER_CERT={missing}: No such file or directory"
    ]


def test_the_check_names_each_certificate_ray_would_fail_on(pki, tmp_path):
    ca_cert, ca_key = pki.ca_pair
    assert ray_tls.problem({"RAY_USE_TLS": "0"}) is None
    assert ray_tls.problem(pki.env(), node_ip=pki.node_ip) is None
    assert ray_tls.problem({"RAY_USE_TLS": "true", "RAY_TLS_SERVER_CERT": str(pki.cert)}) == (
        "RAY_USE_TLS=1 needs RAY_TLS_SERVER_CERT, RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT: "
        "RAY_TLS_SERVER_KEY, RAY_TLS_CA_CERT not set"
    )
    assert ray_tls.problem(pki.env(key=pki.other_key)).startswith(
        f"RAY_TLS_SERVER_CERT={pki.cert} and RAY_TLS_SERVER_KEY={pki.other_key}: not a PEM certificate"
    )
    assert ray_tls.problem(pki.env(cert=pki.other_cert, key=pki.other_key)) == (
        f"RAY_TLS_SERVER_CERT={pki.other_cert}: not signed by RAY_TLS_CA_CERT={pki.ca}; "
        "every node needs a certificate from the same CA"
    )
    # A server-only certificate (what a wss:// server gets): Ray's peers refuse it as a client.
    server_only = make_server_cert(tmp_path, "server", names=("127.0.0.1", pki.node_ip), ca=pki.ca_pair)
    assert "must allow both serverAuth and clientAuth" in ray_tls.problem(
        pki.env(cert=server_only.cert, key=server_only.key)
    )
    loopback_cert, loopback_key = make_node_cert(tmp_path, "loopback", ("127.0.0.1",), (ca_cert, ca_key))
    assert ray_tls.problem(pki.env(cert=loopback_cert, key=loopback_key), node_ip="192.0.2.7") == (
        f"RAY_TLS_SERVER_CERT={loopback_cert}: does not name this node's address 192.0.2.7 "
        "(other Ray processes dial it and check the name); add it to the subject alternative names"
    )
    expired = make_server_cert(tmp_path, "expired", ca=pki.ca_pair, expired=True)
    assert "expired on" in ray_tls.problem(pki.env(cert=expired.cert, key=expired.key))
    # A passphrase-protected key: Ray cannot be given the passphrase; one line, no terminal prompt.
    locked = tmp_path / "locked.key"
    key = serialization.load_pem_private_key(Path(pki.env()["RAY_TLS_SERVER_KEY"]).read_bytes(), None)
    encrypted = serialization.BestAvailableEncryption(b"a passphrase")
    locked.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted)
    )
    assert ray_tls.problem(pki.env(key=locked)) == (
        f"RAY_TLS_SERVER_KEY={locked}: protected by a passphrase, which Ray cannot be given"
    )
