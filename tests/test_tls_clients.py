"""The plugin's Qt-free client and ``backend.client`` against real ``wss://`` servers on 127.0.0.1 (tiny
model): trust on first use, a pinned certificate, a changed one, a studio CA, an expired certificate,
and TLS on one side only. Whether ``hello`` (and the token in it) reached the server is read from the
server's own log: it says "refused a client" for a wrong token and "client ... connected" for a
right one; every refusal test connects with a WRONG token, so a hello sent would show."""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import pytest

from krita_plugin.instantstyle.connection import Connection, ConnectionState, StateChanged
from krita_plugin.instantstyle.jobs import JobInputs, JobState
from krita_plugin.instantstyle.server_trust import (
    CertificateProblem,
    ServerTrust,
    Untrusted,
    forget_certificate,
    readable_fingerprint,
    server_trust,
    trust_certificate,
    trust_view,
)
from krita_plugin.instantstyle.session import Session, UpdateKind
from krita_plugin.instantstyle.settings import DictStore, GenerationSettings, load_settings, save_settings
from tests.conftest import REPO
from tests.server_helpers import ServerThread
from tests.test_plugin_client import STYLE, TARGET, as_image, pump, settings
from tests.tls_certs import Issued, make_ca, make_server_cert

TOKEN = "the-right-token"
WRONG = "a-wrong-token"
SERVER_LOG = "backend.server"
CLI_STYLE = REPO / "examples" / "style.png"


@pytest.fixture
def certs(tmp_path: Path) -> dict[str, Issued | Path]:
    ca, ca_cert, ca_key = make_ca(tmp_path / "ca")
    other_ca, _cert, _key = make_ca(tmp_path / "other-ca")
    return {
        "self_signed": make_server_cert(tmp_path / "a"),
        "replacement": make_server_cert(tmp_path / "b"),
        "ca_signed": make_server_cert(tmp_path / "c", ca=(ca_cert, ca_key)),
        "expired": make_server_cert(tmp_path / "d", ca=(ca_cert, ca_key), expired=True),
        "ca": ca.cert,
        "other_ca": other_ca.cert,
    }


def tls_server(engine, issued: Issued, **config) -> ServerThread:
    return ServerThread(engine, tls_cert=str(issued.cert), tls_key=str(issued.key), token=TOKEN, **config)


def start(url: str, token: str, trust: ServerTrust | None = None) -> Session:
    session = Session(Connection(url, token, trust=trust))
    session.connection.start()
    return session


def until_state(session: Session, state: ConnectionState, timeout: float = 30.0) -> list:
    return pump(session, lambda _u: session.connection.state is state, timeout)


def hellos_seen(caplog) -> list[str]:
    """What the server logged about hellos it received (a refused token, or a client connected)."""
    return [
        record.getMessage()
        for record in caplog.records
        if record.name.startswith(SERVER_LOG)
        and ("refused a client" in record.getMessage() or record.getMessage().startswith("client "))
    ]


def assert_not_retried(session: Session, seconds: float = 1.5) -> None:
    """UNTRUSTED waits for the artist: no new attempt (the first retry would come after 0.5 s)."""
    time.sleep(seconds)
    events = session.connection.poll()
    assert not [e for e in events if isinstance(e, StateChanged)], events
    assert session.connection.state is ConnectionState.UNTRUSTED


def run_a_job(session: Session) -> None:
    job = session.submit(settings(steps=2), JobInputs([(as_image(STYLE), 1.0)]), TARGET)
    pump(session, lambda u: any(x.kind is UpdateKind.RESULT for x in u))
    assert job.state is JobState.DONE and job.images[0].width == 64


# ---------------------------------------------------------------------- the plugin, trust on first use


def test_an_unknown_self_signed_certificate_is_shown_not_sent_to_then_trusted(engine, certs, caplog):
    caplog.set_level(logging.INFO)
    with tls_server(engine, certs["self_signed"]) as server:
        assert server.url.startswith("wss://")
        session = start(server.url, WRONG)
        try:
            updates = until_state(session, ConnectionState.UNTRUSTED)
            assert_not_retried(session)
        finally:
            session.connection.stop()
        untrusted = session.untrusted
        assert untrusted is not None and untrusted.problem is CertificateProblem.UNKNOWN
        assert untrusted.fingerprint == certs["self_signed"].fingerprint and untrusted.can_be_trusted
        (line,) = [u.message for u in updates if u.kind is UpdateKind.CONNECTION][-1:]
        assert "not signed by a known authority" in line and "\n" not in line and "Traceback" not in line
        assert hellos_seen(caplog) == []  # the wrong token was never sent: nothing refused it

        # The Backend section shows the fingerprint; "Trust this certificate" pins it for this server.
        chosen = GenerationSettings(server_url=server.url, token=TOKEN)
        view = trust_view(chosen, untrusted)
        assert view.shown and view.can_trust and not view.can_forget and view.asks  # the section opens
        assert view.fingerprint == readable_fingerprint(certs["self_signed"].fingerprint)
        trust_certificate(chosen, untrusted)
        assert chosen.server_pin == certs["self_signed"].fingerprint
        assert server_trust(chosen).pinned == chosen.server_pin
        trusted = start(server.url, TOKEN, server_trust(chosen))
        try:
            pump(trusted, lambda _u: trusted.connected)
            assert trusted.untrusted is None
            run_a_job(trusted)
        finally:
            trusted.connection.stop()
        assert any(message.startswith("client ") for message in hellos_seen(caplog))

        # The control: with the certificate trusted, a wrong token IS sent, and the server says so.
        caplog.clear()
        control = start(server.url, WRONG, server_trust(chosen))
        try:
            until_state(control, ConnectionState.UNAUTHORIZED)
        finally:
            control.connection.stop()
        assert any("refused a client" in message for message in hellos_seen(caplog))


def test_a_changed_certificate_is_refused_before_hello_and_can_be_forgotten(engine, certs, caplog):
    caplog.set_level(logging.INFO)
    chosen = GenerationSettings()
    with tls_server(engine, certs["self_signed"]) as first:
        port, chosen.server_url = first.port, first.url
        seen = start(first.url, WRONG)
        try:
            until_state(seen, ConnectionState.UNTRUSTED)
        finally:
            seen.connection.stop()
        trust_certificate(chosen, seen.untrusted)
    caplog.clear()
    with tls_server(engine, certs["replacement"], port=port) as second:  # same address, new certificate
        session = start(second.url, WRONG, server_trust(chosen))
        try:
            until_state(session, ConnectionState.UNTRUSTED)
            assert_not_retried(session)
        finally:
            session.connection.stop()
        changed = session.untrusted
        assert changed is not None and changed.problem is CertificateProblem.CHANGED
        assert changed.fingerprint == certs["replacement"].fingerprint and not changed.can_be_trusted
        assert "changed since you trusted it" in session.status and "press Forget" in session.status
        assert "\n" not in session.status
        assert hellos_seen(caplog) == []
        view = trust_view(chosen, changed)
        assert view.line == changed.message and view.can_forget and not view.can_trust and view.asks
        with pytest.raises(ValueError, match="no new server certificate"):
            trust_certificate(chosen, changed)

        forget_certificate(chosen)  # "Forget": the new certificate is asked about, then trusted
        assert chosen.server_pin == "" and not server_trust(chosen).pinned
        again = start(second.url, TOKEN, server_trust(chosen))
        try:
            until_state(again, ConnectionState.UNTRUSTED)
            assert again.untrusted.fingerprint == certs["replacement"].fingerprint
            trust_certificate(chosen, again.untrusted)
        finally:
            again.connection.stop()
        trusted = start(second.url, TOKEN, server_trust(chosen))
        try:
            pump(trusted, lambda _u: trusted.connected)
        finally:
            trusted.connection.stop()


def test_a_studio_ca_is_trusted_without_asking_and_another_ca_is_one_line(engine, certs):
    with tls_server(engine, certs["ca_signed"]) as server:
        session = start(server.url, TOKEN, ServerTrust(str(certs["ca"])))
        try:
            pump(session, lambda _u: session.connected)
            run_a_job(session)
        finally:
            session.connection.stop()
        wrong = start(server.url, TOKEN, ServerTrust(str(certs["other_ca"])))
        try:
            updates = pump(wrong, lambda u: any("not signed by the CA" in x.message for x in u))
        finally:
            wrong.connection.stop()
    line = updates[-1].message
    assert str(certs["other_ca"]) in line and "\n" not in line and not wrong.connected
    assert wrong.untrusted is None  # nothing for the artist to trust: the CA said no


def test_an_expired_certificate_is_one_line(engine, certs):
    with tls_server(engine, certs["expired"]) as server:
        url = server.url
        session = start(url, TOKEN, ServerTrust(str(certs["ca"])))
        try:
            updates = pump(session, lambda u: any("expired" in x.message for x in u))
        finally:
            session.connection.stop()
    line = updates[-1].message
    assert f"the server's certificate at {url} has expired" in line and "\n" not in line


def test_a_pinned_certificate_is_trusted_past_its_dates(engine, tmp_path):
    """A pin is the certificate the artist confirmed, like an SSH host key: its dates are not checked
    (a self-signed server's owner may never renew it), only that it is the same certificate."""
    old = make_server_cert(tmp_path / "old", expired=True)
    with tls_server(engine, old) as server:
        session = start(server.url, TOKEN, ServerTrust(pinned=old.fingerprint))
        try:
            pump(session, lambda _u: session.connected)
        finally:
            session.connection.stop()


def test_tls_on_one_side_only_is_one_line_each_way(engine, certs):
    with tls_server(engine, certs["self_signed"]) as tls, ServerThread(engine) as plain:
        plain_to_tls = tls.url.replace("wss://", "ws://")
        tls_to_plain = plain.url.replace("ws://", "wss://")
        lines = {}
        for url, expected in ((plain_to_tls, "use wss:// instead of ws://"), (tls_to_plain, "TLS")):
            session = start(url, TOKEN)
            try:
                updates = pump(session, lambda u, e=expected: any(e in x.message for x in u))
            finally:
                session.connection.stop()
            lines[url] = updates[-1].message
    assert "may require TLS" in lines[plain_to_tls]
    assert "may not speak TLS" in lines[tls_to_plain] or "does not speak TLS" in lines[tls_to_plain]
    assert all("\n" not in line and "Traceback" not in line for line in lines.values()), lines


# ---------------------------------------------------------------------- settings, Qt-free


def test_the_pin_and_ca_file_round_trip_through_the_settings_store():
    fingerprint = ":".join(["AB"] * 32)
    saved = GenerationSettings(server_url="wss://studio.example:9443", server_ca_file="/etc/studio-ca.pem")
    trust_certificate(
        saved, Untrusted("wss://Studio.example:9443/x", CertificateProblem.UNKNOWN, "?", fingerprint.lower())
    )
    store = DictStore()
    save_settings(store, saved)
    loaded = load_settings(store)
    assert (loaded.server_pin, loaded.server_pin_for, loaded.server_ca_file) == (
        fingerprint,
        "studio.example:9443",
        "/etc/studio-ca.pem",
    )
    assert server_trust(loaded) == ServerTrust("/etc/studio-ca.pem", fingerprint)
    # A pin is for the server it was confirmed for: another address is asked about afresh.
    assert server_trust(loaded, "wss://other.example:9443").pinned == ""
    store.write("server_pin", '"not a fingerprint"')
    assert server_trust(load_settings(store)).pinned == ""  # corrupt: asked again, no crash
    view = trust_view(loaded, None)
    assert view.shown and view.can_forget and view.fingerprint.count("\n") == 3 and not view.asks
    assert not trust_view(GenerationSettings(server_url="ws://127.0.0.1:8765"), None).shown


# ---------------------------------------------------------------------- backend.client


LOG_RECORD = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [A-Z]+ ")


def cli(capsys, url: str, *options: str) -> tuple[int, str]:
    from backend import client

    arguments = ["--url", url, "--style", str(CLI_STYLE), "--prompt", "x", "--width", "64", "--height", "64"]
    code = client.main([*arguments, "--steps", "2", "--token", TOKEN, *options])
    # The in-process test servers log to the same stderr (an earlier in-process CLI run configured
    # logging): the client's own output is every line that is not a log record.
    lines = capsys.readouterr().err.strip().splitlines()
    return code, "\n".join(line for line in lines if not LOG_RECORD.match(line))


def test_the_headless_client_with_ca_pin_wrong_pin_and_an_unknown_certificate(
    engine, certs, capsys, tmp_path
):
    out = str(tmp_path / "out.png")
    pin = certs["self_signed"].fingerprint
    with tls_server(engine, certs["ca_signed"]) as signed, tls_server(engine, certs["self_signed"]) as own:
        assert cli(capsys, signed.url, "--ca", str(certs["ca"]), "--out", out)[0] == 0
        assert Path(out).is_file()
        code, err = cli(capsys, own.url, "--pin", pin.replace(":", "").lower(), "--out", out)
        assert code == 0, err
        code, err = cli(capsys, own.url, "--out", out)  # unknown: the fingerprint and how to pin it
        assert code == 2 and err == (
            f"error: the server's certificate at {own.url} is not signed by a known authority (SHA-256 "
            f"{pin}): if that is the fingerprint the server printed, pass --pin {pin}"
        )
        code, err = cli(capsys, own.url, "--pin", certs["replacement"].fingerprint, "--out", out)
        assert (
            code == 2
            and len(err.splitlines()) == 1
            and err.startswith(
                f"error: the server's certificate is not the one --pin names (it shows SHA-256 {pin}): "
                f"if its owner replaced it, pass --pin {pin};"
            )
        )
        code, err = cli(capsys, signed.url, "--ca", str(certs["other_ca"]), "--out", out)
        assert code == 2 and "not signed by the CA" in err and len(err.splitlines()) == 1
        code, err = cli(capsys, own.url.replace("wss://", "ws://"), "--out", out)
        assert code == 2 and "use wss:// instead of ws://" in err and len(err.splitlines()) == 1
        code, err = cli(capsys, own.url.replace("wss://", "ws://"), "--pin", pin, "--out", out)
        assert code == 2 and err == "error: --ca and --pin need a wss:// --url"
        code, err = cli(capsys, own.url, "--pin", "12:34", "--out", out)
        assert code == 2 and "not a SHA-256 fingerprint" in err
