"""The server over the network (tiny model, loopback): real TLS handshakes with each kind of trust, the
kept self-signed certificate, the plain-text rule, the path prefix, the trusted proxy's client address,
hello throttling, tokens kept out of the logs, and ``serve``'s flags."""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import re
import ssl
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import websockets
from cryptography.hazmat.primitives import serialization
from websockets.asyncio.client import connect

from backend.cli import build_parser
from backend.client import input_frame
from backend.server.app import config_from_args
from backend.server.certificates import (
    Renewal,
    certificate_fingerprint,
    default_tls_dir,
    ensure_self_signed,
    host_names,
)
from backend.server.config import ConfigError, ServerConfig
from backend.server.hello_guard import HelloGuard, HelloPolicy
from backend.server.proxy import TrustedProxies, parse_networks
from protocol import (
    Error,
    ErrorCode,
    Hello,
    ModelStatus,
    Ping,
    Pong,
    Result,
    ServerHello,
    decode_server_message,
    encode_message,
)
from protocol.tls import (
    CertificateProblem,
    CertificateRefused,
    ServerTrust,
    explain_handshake_failure,
    fingerprint,
)
from tests.conftest import REPO, noise_image
from tests.server_helpers import generate_message, run, running_server
from tests.tls_certs import make_ca, make_server_cert

TOKEN = "tok-SECRET-7f3a9c1e"
STYLE = noise_image(3)


@pytest.fixture(scope="module")
def certs(tmp_path_factory):
    folder = tmp_path_factory.mktemp("certs")
    ca, ca_cert, ca_key = make_ca(folder)
    return {
        "ca": ca,
        "signed": make_server_cert(folder, "signed", ca=(ca_cert, ca_key)),
        "expired": make_server_cert(folder, "expired", ca=(ca_cert, ca_key), expired=True),
        "self": make_server_cert(folder, "self"),
        "other": make_server_cert(folder, "other"),
    }


async def open_client(url: str, trust: ServerTrust | None = None, **options):
    """A raw ``websockets`` client; over TLS the certificate is checked (pin) before anything is sent."""
    tls = {"ssl": trust.context()} if trust is not None else {}
    ws = await connect(url, open_timeout=10, proxy=None, compression=None, **tls, **options)
    if trust is not None:
        try:
            trust.check(ws.transport.get_extra_info("ssl_object").getpeercert(binary_form=True))
        except CertificateRefused:
            await ws.close()
            raise
    return ws


async def hello(url: str, trust: ServerTrust | None = None, token: str | None = TOKEN, **options):
    """Hello (and, when accepted, a ping): the server's reply to the hello."""
    ws = await open_client(url, trust, **options)
    try:
        await ws.send(encode_message(Hello(client="tls-test", token=token)))
        reply = decode_server_message(await ws.recv())
        if isinstance(reply, ServerHello):
            await ws.send(encode_message(Ping(7)))
            answer = decode_server_message(await ws.recv())
            while isinstance(answer, ModelStatus):  # a server still loading announces each phase
                answer = decode_server_message(await ws.recv())
            assert answer == Pong(7)
        return reply
    finally:
        await ws.close()


def tls_config(issued) -> dict:
    return {"tls_cert": str(issued.cert), "tls_key": str(issued.key), "token": TOKEN}


# ------------------------------------------------------------------ handshakes


def test_a_ca_signed_server_runs_a_job_over_wss(engine, certs):
    async def scenario():
        async with running_server(engine, **tls_config(certs["signed"])) as server:
            assert server.url.startswith("wss://127.0.0.1:")
            trust = ServerTrust(ca_file=str(certs["ca"].cert))
            ws = await open_client(server.url, trust, max_size=None)
            await ws.send(encode_message(Hello(client="tls-test", token=TOKEN)))
            assert isinstance(decode_server_message(await ws.recv()), ServerHello)
            await ws.send(input_frame(1, 0, STYLE))
            await ws.send(encode_message(generate_message(1, steps=2)))
            while not isinstance(message := await ws.recv(), str) or not isinstance(
                reply := decode_server_message(message), Result | Error
            ):
                pass
            await ws.close()
            assert isinstance(reply, Result), reply
            # The same server through "localhost": the certificate names it too.
            assert isinstance(await hello(server.url.replace("127.0.0.1", "localhost"), trust), ServerHello)

    run(scenario())


def test_a_pinned_certificate_is_accepted_and_another_refused_as_changed(engine, certs):
    async def scenario():
        async with running_server(engine, **tls_config(certs["self"])) as server:
            assert server.certificate_fingerprint == certs["self"].fingerprint
            assert isinstance(
                await hello(server.url, ServerTrust(pinned=certs["self"].fingerprint)), ServerHello
            )
            with pytest.raises(CertificateRefused) as refused:
                await hello(server.url, ServerTrust(pinned=certs["other"].fingerprint))
            assert refused.value.problem is CertificateProblem.CHANGED
            assert refused.value.fingerprint == certs["self"].fingerprint
            assert len(refused.value.message.splitlines()) == 1
            # Without a pin or a CA, an unknown self-signed certificate is refused by the handshake.
            with pytest.raises(ssl.SSLCertVerificationError) as unknown:
                await hello(server.url, ServerTrust())
            problem = explain_handshake_failure(unknown.value, server.url, ServerTrust())
            assert problem.problem is CertificateProblem.UNKNOWN

    run(scenario())


def test_an_expired_certificate_is_one_line(engine, certs):
    async def scenario():
        async with running_server(engine, **tls_config(certs["expired"])) as server:
            trust = ServerTrust(ca_file=str(certs["ca"].cert))
            with pytest.raises(ssl.SSLCertVerificationError) as failed:
                await hello(server.url, trust)
            problem = explain_handshake_failure(failed.value, server.url, trust)
            assert problem.problem is CertificateProblem.INVALID
            assert "expired" in problem.message and len(problem.message.splitlines()) == 1

    run(scenario())


def test_plain_ws_to_a_tls_port_and_tls_to_a_plain_port_fail_fast(engine, certs):
    async def scenario():
        async with running_server(engine, **tls_config(certs["signed"])) as server:
            plain = server.url.replace("wss://", "ws://")
            started = time.monotonic()
            with pytest.raises((websockets.exceptions.InvalidMessage, EOFError, OSError)) as failed:
                await hello(plain)
            assert time.monotonic() - started < 5, "a plain client should not hang on a TLS port"
            assert failed.value is not None
            # The TLS server is unharmed.
            assert isinstance(
                await hello(server.url, ServerTrust(ca_file=str(certs["ca"].cert))), ServerHello
            )
        async with running_server(engine) as plain_server:
            tls_url = plain_server.url.replace("ws://", "wss://")
            trust = ServerTrust(ca_file=str(certs["ca"].cert))
            started = time.monotonic()
            # The plain server answers the ClientHello as a bad HTTP request and closes: depending on
            # timing the client's TLS layer sees a non-TLS record or a reset.
            with pytest.raises((ssl.SSLError, ConnectionError)) as failed:
                await hello(tls_url, trust)
            assert time.monotonic() - started < 5
            problem = explain_handshake_failure(failed.value, tls_url, trust)
            assert len(problem.message.splitlines()) == 1
            if isinstance(failed.value, ssl.SSLError):
                assert problem.problem is CertificateProblem.NOT_TLS, problem.message

    run(scenario())


# ------------------------------------------------------------------ the kept self-signed certificate


def test_the_self_signed_certificate_is_kept_renewed_private_and_covers_loopback(engine, tmp_path):
    names = host_names("127.0.0.1")
    assert {"127.0.0.1", "localhost", "::1"} <= set(names)
    first = ensure_self_signed(tmp_path, names)
    assert first.outcome is Renewal.CREATED
    assert stat.S_IMODE(os.stat(first.key).st_mode) == 0o600
    again = ensure_self_signed(tmp_path, names)  # a restart
    assert again.outcome is Renewal.KEPT and again.fingerprint == first.fingerprint
    assert certificate_fingerprint(first.cert) == first.fingerprint

    # A real handshake that checks names: the certificate is its own CA, for 127.0.0.1 and localhost.
    async def scenario():
        config = {"tls_cert": str(first.cert), "tls_key": str(first.key), "token": TOKEN}
        async with running_server(engine, **config) as server:
            trust = ServerTrust(ca_file=str(first.cert))
            for host in ("127.0.0.1", "localhost"):
                assert isinstance(await hello(server.url.replace("127.0.0.1", host), trust), ServerHello)

    run(scenario())

    for days in (340, 400):  # within 30 days of its end, and past it (in a folder of its own)
        later = datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(days=days)
        folder = tmp_path / f"in-{days}-days"
        made = ensure_self_signed(folder, names)
        renewed = ensure_self_signed(folder, names, now=later)
        assert renewed.outcome is Renewal.EXPIRING and renewed.fingerprint != made.fingerprint
    # Names that drift (DHCP, a VPN) keep the certificate artists pinned; an address the server is
    # told to bind that it does not name makes a new one.
    drifted = ensure_self_signed(tmp_path, (*names, "10.9.8.7"))
    assert drifted.outcome is Renewal.KEPT and drifted.fingerprint == first.fingerprint
    moved = ensure_self_signed(tmp_path, (*names, "studio-gpu.example"), required=("studio-gpu.example",))
    assert moved.outcome is Renewal.NAMES_CHANGED and "studio-gpu.example" in moved.names
    assert moved.fingerprint != first.fingerprint
    # A host name IDNA can carry is written in ASCII; one it cannot is left out, not a traceback.
    assert "xn--hst-sna.example" in host_names("höst.example") and "" not in host_names("a..b")
    (tmp_path / "server.crt").write_text("not a certificate")
    assert ensure_self_signed(tmp_path, names).outcome is Renewal.UNREADABLE
    assert stat.S_IMODE(os.stat(tmp_path / "server.key").st_mode) == 0o600


def test_serve_tls_self_signed_prints_the_fingerprint_clients_pin(tmp_path, tiny_paths):
    """The real command: the certificate is made once, its fingerprint printed, and a pinning client
    gets in; a restart shows the same fingerprint."""
    seen = []
    for _ in range(2):
        command = (
            f"serve --model tiny --port 0 --device cpu --no-warm-up --tls self-signed --tls-dir {tmp_path}"
        )
        server = subprocess.Popen(
            [sys.executable, "-m", "backend", *command.split()],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )
        try:
            url = shown = None
            for line in server.stdout:
                url = url or (re.search(r"listening on (wss://\S+);", line) or [None, None])[1]
                shown = (re.search(r"SHA-256 fingerprint: (\S+)", line) or [None, None])[1]
                if shown:
                    break
            assert url and shown, "no wss:// URL and fingerprint on the console"
            assert shown == certificate_fingerprint(tmp_path / "server.crt")
            assert isinstance(run(hello(url, ServerTrust(pinned=shown), token=None)), ServerHello)
            seen.append(shown)
        finally:
            server.terminate()
            server.wait(30)
    assert seen[0] == seen[1]


# ------------------------------------------------------------------ rules and flags


def parse(arguments: str):
    return build_parser().parse_args(["serve", *arguments.split()])


def test_plain_text_beyond_loopback_needs_insecure(engine, tmp_path, caplog):
    with pytest.raises(ConfigError) as refused:
        config_from_args(parse(f"--host 0.0.0.0 --token {TOKEN}")).check()
    assert "--tls" in str(refused.value) and "--insecure" in str(refused.value)
    assert len(str(refused.value).splitlines()) == 1
    config_from_args(parse(f"--host 0.0.0.0 --token {TOKEN} --insecure")).check()
    config_from_args(parse(f"--host 0.0.0.0 --token {TOKEN} --tls self-signed --tls-dir {tmp_path}")).check()
    config_from_args(parse("--host 127.0.0.1")).check()  # loopback stays plain

    async def scenario():
        caplog.set_level(logging.INFO)
        async with running_server(engine, host="0.0.0.0", token=TOKEN, insecure=True):
            pass

    run(scenario())
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len([w for w in warnings if "clear text" in w]) == 1, warnings


def test_serve_flags_become_the_server_config(tmp_path, monkeypatch):
    token_file = tmp_path / "token"
    token_file.write_text("  tok-from-a-file-42  \nignored\n")
    config = config_from_args(
        parse(
            f"--token-file {token_file} --path /instantstyle/ --trusted-proxy 10.0.0.1 "
            "--trusted-proxy 192.168.0.0/16 --ping-interval 5 --ping-timeout 0 --max-connections 3 "
            f"--tls-cert {tmp_path}/c.pem --tls-key {tmp_path}/k.pem"
        )
    )
    assert config.token == "tok-from-a-file-42"
    assert (config.path, config.trusted_proxies) == ("/instantstyle/", ("10.0.0.1", "192.168.0.0/16"))
    assert (config.ping_interval, config.ping_timeout, config.max_connections) == (5.0, 0.0, 3)
    assert (config.tls_cert, config.tls_key, config.scheme) == (
        f"{tmp_path}/c.pem",
        f"{tmp_path}/k.pem",
        "wss",
    )
    assert config.insecure is False
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    assert default_tls_dir() == tmp_path / "data" / "instantstyle" / "tls"
    made = config_from_args(parse("--tls self-signed"))
    assert Path(made.tls_cert).parent == tmp_path / "data" / "instantstyle" / "tls"
    (tmp_path / "empty").write_text("\n")
    mistakes = {
        f"--token-file {tmp_path}/empty": "its first line is empty",
        f"--token-file {tmp_path}/missing": "cannot read it",
        f"--token-file {token_file} --token another-token": "not both",
        f"--tls self-signed --tls-cert {tmp_path}/c.pem": "not both",
        "--trusted-proxy not-an-address": "expected an IP address",
        "--path instantstyle": "expected a path",
        "--max-connections 0": "expected 1 or more",
        "--ping-interval -1": "0 (off) or more",
        "--ping-timeout nan": "0 (off) or more",
        # Behind a proxy the network reaches the server, loopback or not.
        "--path /instantstyle": "need a token",
        "--trusted-proxy 127.0.0.1": "need a token",
        f"--tls-cert {tmp_path}/locked.crt --tls-key {tmp_path}/locked.key": "protected by a passphrase",
    }
    locked = make_server_cert(tmp_path, "locked")  # its key then re-encrypted with a passphrase
    key = serialization.load_pem_private_key(locked.key.read_bytes(), None)
    encrypted = serialization.BestAvailableEncryption(b"a passphrase")
    locked.key.write_bytes(
        key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, encrypted)
    )
    (tmp_path / "bom").write_bytes("\ufefftok-from-an-editor-7".encode("utf-8"))
    assert config_from_args(parse(f"--token-file {tmp_path}/bom")).token == "tok-from-an-editor-7"
    for arguments, expected in mistakes.items():
        with pytest.raises(ConfigError) as error:
            config_from_args(parse(arguments)).ssl_context() if "locked" in arguments else None
            config_from_args(parse(arguments)).check()
        assert expected in str(error.value) and len(str(error.value).splitlines()) == 1, arguments


# ------------------------------------------------------------------ path prefix and trusted proxies


def test_the_websocket_is_served_only_at_its_path(engine):
    async def scenario():
        async with running_server(engine, path="/instantstyle", token=TOKEN) as server:
            base = server.url.removesuffix("/instantstyle")
            assert server.url.endswith(f":{server.port}/instantstyle")
            for good in ("/instantstyle", "/instantstyle/", "/instantstyle?v=1"):
                assert isinstance(await hello(base + good), ServerHello), good
            for wrong in ("/", "/instantstyle/x", "/instantstylex", "/other"):
                with pytest.raises(websockets.exceptions.InvalidStatus) as refused:
                    await hello(base + wrong)
                assert refused.value.response.status_code == 404, wrong
            assert not server.connections

    run(scenario())


def test_x_forwarded_for_counts_only_from_a_trusted_proxy(engine, caplog):
    async def address_seen(trusted: tuple[str, ...], header: str | None) -> str:
        async with running_server(engine, trusted_proxies=trusted, token=TOKEN) as server:
            headers = {"X-Forwarded-For": header} if header else None
            ws = await open_client(server.url, additional_headers=headers)
            await ws.send(encode_message(Hello(client="via-proxy", token=TOKEN)))
            assert isinstance(decode_server_message(await ws.recv()), ServerHello)
            (connection,) = server.connections
            await ws.close()
            return connection.address

    async def scenario():
        caplog.set_level(logging.INFO)
        assert await address_seen(("127.0.0.1",), "203.0.113.7") == "203.0.113.7"
        assert "connected from 203.0.113.7" in caplog.text
        # The rightmost address that is not a trusted proxy; what a client prepends is not believed.
        chain = "198.51.100.1, 203.0.113.9, 10.1.2.3"
        assert await address_seen(("127.0.0.1", "10.0.0.0/8"), chain) == "203.0.113.9"
        assert await address_seen(("10.0.0.0/8",), "203.0.113.7") == "127.0.0.1"  # peer not trusted
        assert await address_seen((), "203.0.113.7") == "127.0.0.1"
        assert await address_seen(("127.0.0.1",), "not-an-address") == "127.0.0.1"

    run(scenario())
    proxies = TrustedProxies(parse_networks(["127.0.0.1", "::1"]))
    assert proxies.client_address("::1", ["[2001:db8::5]:443"]) == "2001:db8::5"
    assert proxies.client_address("127.0.0.1", ["127.0.0.1"]) == "127.0.0.1"


# ------------------------------------------------------------------ hello throttling and token hygiene


def test_failed_hellos_from_one_address_are_slowed_and_others_are_not(engine):
    # Delays far above a loaded machine's round trip (which "not slowed" must stay under).
    policy = HelloPolicy(free_attempts=3, window_seconds=60, first_delay_seconds=1.0, max_delay_seconds=2.0)

    async def timed_hello(url: str, address: str, token: str) -> tuple[float, object]:
        started = time.monotonic()
        reply = await hello(url, token=token, additional_headers={"X-Forwarded-For": address})
        return time.monotonic() - started, reply

    async def scenario():
        async with running_server(
            engine, token=TOKEN, trusted_proxies=("127.0.0.1",), hello_policy=policy
        ) as s:
            for _ in range(3):
                seconds, reply = await timed_hello(s.url, "203.0.113.1", "wrong-token-1")
                assert isinstance(reply, Error) and reply.code is ErrorCode.UNAUTHORIZED
                assert seconds < 0.9
            slowed, reply = await timed_hello(s.url, "203.0.113.1", "wrong-token-1")
            assert isinstance(reply, Error) and slowed >= 1.0
            slower, _ = await timed_hello(s.url, "203.0.113.1", "wrong-token-1")
            assert slower >= 2.0
            other, reply = await timed_hello(s.url, "203.0.113.2", "wrong-token-1")
            assert isinstance(reply, Error) and other < 0.9, "another address was slowed too"
            # Several at once from a third address are answered one after another, not together.
            for _ in range(3):
                await timed_hello(s.url, "203.0.113.3", "wrong-token-1")
            together = await asyncio.gather(*(timed_hello(s.url, "203.0.113.3", "x" * 8) for _ in range(3)))
            waits = sorted(seconds for seconds, _ in together)
            assert waits[0] >= 1.0 and waits[1] >= 3.0 and waits[2] >= 5.0, waits
            # The right token is still accepted (late), then the address is forgotten.
            late, reply = await timed_hello(s.url, "203.0.113.1", TOKEN)
            assert isinstance(reply, ServerHello) and late >= 2.0
            quick, reply = await timed_hello(s.url, "203.0.113.1", TOKEN)
            assert isinstance(reply, ServerHello) and quick < 0.9
            return slowed, slower

    slowed, slower = run(scenario())
    print(f"4th failed hello: {slowed:.2f} s, 5th: {slower:.2f} s")


def test_the_hello_table_is_bounded_queues_an_address_and_forgets_after_its_window():
    now = [0.0]
    guard = HelloGuard(HelloPolicy(free_attempts=1, max_addresses=100), clock=lambda: now[0])
    for index in range(10_000):
        guard.attempt(f"10.0.{index // 256}.{index % 256}")
    assert len(guard) == 100
    assert guard.attempt("192.0.2.1") == 0.0
    sequential = []
    for _ in range(6):  # each retried after the previous answer: the delay doubles up to 4 s
        sequential.append(guard.attempt("192.0.2.1"))
        now[0] += sequential[-1]
    assert sequential == [0.5, 1.0, 2.0, 4.0, 4.0, 4.0]
    at_once = [guard.attempt("192.0.2.2") for _ in range(12)]  # many connections at the same moment
    # Queued one after another; those whose turn would come after 8 s are refused unread (None): a
    # guesser's parallel connections get no more answers than one, and hold no slots waiting.
    assert at_once[:5] == [0.0, 0.5, 1.5, 3.5, 7.5] and at_once[5:] == [None] * 7
    now[0] += 4.0  # as the queue drains, a turn opens again
    assert guard.attempt("192.0.2.2") == 7.5
    # IPv6: a host picks any address of its /64, so the /64 is counted; another /64 is not.
    assert [guard.attempt(f"2001:db8:1:2::{n:x}") for n in range(3)] == [0.0, 0.5, 1.5]
    assert guard.attempt("2001:db8:1:3::1") == 0.0
    assert guard.attempt("::ffff:192.0.2.9") == 0.0  # an IPv4 client seen through IPv6 is itself
    now[0] += 61.0
    assert guard.attempt("192.0.2.1") == 0.0  # a new window


def test_tokens_never_reach_the_log_even_at_debug(engine, caplog):
    wrong = "tok-WRONG-guess-5e7d2b"

    async def scenario():
        caplog.set_level(logging.DEBUG)
        async with running_server(engine, token=TOKEN) as server:
            refused = await hello(server.url, token=wrong)
            accepted = await hello(server.url, token=TOKEN)
            return refused, accepted

    refused, accepted = run(scenario())
    assert isinstance(refused, Error) and isinstance(accepted, ServerHello)
    # The test's own client (websockets.client) logs what it sends at DEBUG; the server must not.
    server_lines = "\n".join(
        f"{r.name} {r.getMessage()}" for r in caplog.records if not r.name.startswith("websockets.client")
    )
    assert "refused a client from 127.0.0.1" in server_lines and "connected from 127.0.0.1" in server_lines
    assert TOKEN not in server_lines and wrong not in server_lines


def test_a_certificate_without_its_key_or_unreadable_is_one_line(certs, tmp_path):
    with pytest.raises(ConfigError, match="both a certificate and its key"):
        ServerConfig(tls_cert=str(certs["self"].cert)).check()
    with pytest.raises(ConfigError) as error:
        ServerConfig(tls_cert=str(tmp_path / "none.crt"), tls_key=str(tmp_path / "none.key")).ssl_context()
    assert "cannot use the TLS certificate" in str(error.value) and len(str(error.value).splitlines()) == 1
    assert fingerprint(certs["self"].der) == certs["self"].fingerprint
