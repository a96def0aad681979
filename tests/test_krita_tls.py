"""A studio's ``wss://`` server with a self-signed certificate, in real Krita (every version CI prepares).

``tests/krita_e2e/instantstyle_e2e/tls.py`` drives Krita: its Python's ``ssl``, the Backend section
showing the unknown certificate's fingerprint before anything is sent, "Trust this certificate", a job
over TLS, then the same address with another certificate refused with the changed-certificate line.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.conftest import REPO
from tests.krita_harness import KritaHome, read_report, run_krita, virtual_display
from tests.krita_versions import VERSIONS, KritaVersion
from tests.test_krita_e2e import install_with_hook, prepared, returning_artist
from tests.tls_certs import Issued, make_server_cert

pytestmark = pytest.mark.krita
ARTIFACTS = REPO / "artifacts" / "krita-tls"
TOKEN = "studio-token-3141"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class TlsServer:
    """``python -m backend serve`` on the tiny model with a certificate, its output kept in ``log``."""

    def __init__(self, issued: Issued, port: int, log: Path) -> None:
        command = [
            sys.executable, "-m", "backend", "serve", "--model", "tiny", "--device", "cpu", "--no-warm-up",
            "--port", str(port), "--tls-cert", str(issued.cert), "--tls-key", str(issued.key),
            "--token", TOKEN,
        ]  # fmt: skip
        self.log = log.open("a")
        self.process = subprocess.Popen(
            command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.log.write(line)
            if "ready on wss://" in line:
                break
        else:
            self.stop()
            pytest.fail(f"the TLS backend did not start: see {log}")
        self.drain = threading.Thread(target=self._drain, daemon=True)
        self.drain.start()

    def _drain(self) -> None:
        for line in self.process.stdout:  # type: ignore[union-attr]
            self.log.write(line)

    def stop(self) -> None:
        self.process.terminate()  # SIGTERM: a clean shutdown
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(10)
        if hasattr(self, "drain"):
            self.drain.join(10)
        self.log.close()


@pytest.fixture(scope="module", params=[pytest.param(v, id=f"krita-{v.name}") for v in VERSIONS])
def tls_run(request, tiny_paths, tmp_path_factory):
    version: KritaVersion = request.param
    prepared(version)
    certificates = tmp_path_factory.mktemp(f"tls-{version.name}")
    first = make_server_cert(certificates, "first")
    second = make_server_cert(certificates, "second")
    home = KritaHome.fresh(version, tmp_path_factory.mktemp(f"krita-tls-{version.name}"))
    artifacts = ARTIFACTS / version.name
    shutil.rmtree(artifacts, ignore_errors=True)
    artifacts.mkdir(parents=True)
    port = free_port()
    settings = returning_artist(f"wss://127.0.0.1:{port}")
    settings.token = TOKEN
    install_with_hook(home, settings)
    env = {
        "INSTANTSTYLE_E2E_OUT": home.guest(home.out),
        "INSTANTSTYLE_E2E_TLS": "1",
        "INSTANTSTYLE_E2E_BUDGET_SCALE": os.environ.get("INSTANTSTYLE_E2E_BUDGET_SCALE", "1"),
    }
    server_log = artifacts / "server.log"
    restarted = threading.Event()
    servers = [TlsServer(first, port, server_log)]
    stop = threading.Event()

    def restart_when_asked() -> None:
        """Answer the hook's restart.json: the same port, the second certificate."""
        while not stop.wait(0.05):
            if (home.out / "restart.json").exists():
                servers[0].stop()
                servers.append(TlsServer(second, port, server_log))
                (home.out / "restart.done").write_text("")
                restarted.set()
                return

    watcher = threading.Thread(target=restart_when_asked, daemon=True)
    watcher.start()
    try:
        with (artifacts / "krita.log").open("w") as log, virtual_display(log) as display:
            run_krita(home, {**env, "DISPLAY": display}, log, 600)
    finally:
        stop.set()
        watcher.join(60)
        servers[-1].stop()
    for path in home.out.iterdir():
        if path.is_file():
            shutil.copy(path, artifacts / path.name)
    saved = re.findall(r"^server_pin=(.*)$", home.kritarc.read_text(), re.MULTILINE)
    saved_pin = [json.loads(value) for value in saved]  # the plugin stores JSON text, as every setting
    yield read_report(artifacts), first, second, saved_pin, server_log.read_text(), restarted.is_set()
    if version.root is not None:
        shutil.rmtree(home.host_top, ignore_errors=True)


def test_krita_asks_before_trusting_a_self_signed_server_and_refuses_a_changed_certificate(tls_run):
    report, first, second, saved_pin, server_log, restarted = tls_run
    assert report.get("finished") and "traceback" not in report, report.get("where")
    # Krita's own Python has ssl, with TLS 1.3.
    assert report["ssl"]["openssl"].startswith("OpenSSL") and report["ssl"]["tls13"], report["ssl"]

    untrusted = report["untrusted"]
    assert untrusted["problem"] == "unknown" and not untrusted["connected"] and not untrusted["pin_before"]
    assert untrusted["fingerprint"] == first.fingerprint
    assert untrusted["shown_fingerprint"].replace("\n", ":") == first.fingerprint  # what the artist compares
    # The Backend section opened by itself to ask: the artist needs no menu to find the question.
    assert untrusted["section_open"] and untrusted["trust_button"], untrusted

    trusted = report["trusted"]
    assert trusted["pin"] == first.fingerprint and trusted["pin_for"].startswith("127.0.0.1:"), trusted
    assert report["stylize"]["state"] == "done" and len(report["stylize"]["new_layers"]) == 1

    assert restarted
    changed = report["changed"]
    assert changed["fingerprint"] == second.fingerprint and not changed["connected"]
    assert "changed" in changed["line"] and not changed["trust_button"], changed
    assert changed["pin"] == first.fingerprint
    # Kept in Krita's settings after Krita quit: the first certificate, never the second.
    assert saved_pin == [first.fingerprint], saved_pin
    # The fingerprint the artist compared is the one the server printed on its console. The refused
    # attempts sent no hello (so no token): the one client either server saw is the trusted one; the
    # second server had a WebSocket opened (the certificate is checked after the handshake) and closed.
    first_log, second_log = server_log.split(f"fingerprint: {second.fingerprint}")
    assert f"fingerprint: {first.fingerprint}" in first_log
    assert first_log.count("client krita-instantstyle connected") == 1, first_log
    assert "connection open" in second_log and "client krita-instantstyle connected" not in second_log
    assert TOKEN not in server_log
