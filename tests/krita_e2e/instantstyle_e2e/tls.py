"""A ``wss://`` backend with a self-signed certificate in real Krita (test hook, never shipped).

Krita's own Python: its ``ssl``; the docker's Backend section shows the unknown certificate's
fingerprint and sends nothing until the artist presses "Trust this certificate"; then a job runs over
TLS; then the test restarts the server on the same port with another certificate: the plugin refuses
it with the changed-certificate line and keeps the first pin. ``report.json`` in
``INSTANTSTYLE_E2E_OUT``, then Krita quits. The test answers ``restart.json`` with ``restart.done``.
"""

import ssl
import sys

from . import layer_names, new_document
from .hook_runner import OUT, HookRunner

SIZE = 64


class TlsRunner(HookRunner):
    def __init__(self):
        super().__init__(budget=300)

    def wait_for_window(self):
        self.window = self.app.activeWindow()
        if self.window is None:
            return
        self.app.setBatchmode(True)
        from instantstyle.controller import controller

        self.controller = controller()
        self.report["ssl"] = {
            "python": sys.version.split()[0],
            "openssl": ssl.OPENSSL_VERSION,
            "tls13": ssl.HAS_TLSv1_3,
        }
        self.document, self.layer = new_document(self.window, "tls", SIZE)
        self.docker().show()
        self.log("document ready")
        self.state = self.wait_untrusted

    def wait_untrusted(self):
        untrusted = self.controller.session.untrusted
        if untrusted is None or not untrusted.can_be_trusted:
            return
        docker = self.docker()
        docker.refresh()
        section = docker.backend_section
        section.refresh()
        self.report["untrusted"] = {
            "problem": untrusted.problem.value,
            "fingerprint": untrusted.fingerprint,
            "connected": self.controller.session.connected,
            "section_open": section.body.isVisibleTo(docker),
            "line": section.certificate.text(),
            "shown_fingerprint": section.fingerprint.text(),
            "trust_button": section.trust_button.isVisibleTo(section),
            "pin_before": self.controller.settings.server_pin,
            "message": self.controller.message,
        }
        section.grab().save(str(OUT / "krita-trust.png"))
        self.log("certificate shown; trusting it")
        section.trust_button.click()  # as the artist does, having compared the fingerprint
        self.state = self.wait_connected

    def wait_connected(self):
        if not self.controller.session.connected:
            return
        self.report["trusted"] = {
            "pin": self.controller.settings.server_pin,
            "pin_for": self.controller.settings.server_pin_for,
            "status": self.controller.session.status,
        }
        self.layers_before = layer_names(self.document)
        self.document.setActiveNode(self.layer)
        self.state = self.stylize_when_active

    def stylize_when_active(self):
        node = self.document.activeNode()
        if self.app.activeDocument() != self.document or node is None or node.name() != "Painted":
            return
        self.app.action("instantstyle_stylize_layer").trigger()
        self.log(f"stylize triggered: {self.controller.message}")
        self.state = self.wait_result

    def wait_result(self):
        jobs = list(self.controller.session.jobs.values())
        names = layer_names(self.document)
        new = [n for n in names if n not in self.layers_before and n != "InstantStyle preview"]
        if not jobs or not jobs[-1].state.finished or not new or self.controller._in_tick:
            return
        self.report["stylize"] = {"state": jobs[-1].state.value, "new_layers": new}
        (OUT / "restart.json").write_text("{}")  # the test restarts the server with another certificate
        self.log("asked for a restart with another certificate")
        self.state = self.wait_restarted

    def wait_restarted(self):
        if not (OUT / "restart.done").exists():
            return
        self.state = self.wait_changed

    def wait_changed(self):
        untrusted = self.controller.session.untrusted
        if untrusted is None or untrusted.problem.value != "changed":
            return
        docker = self.docker()
        docker.refresh()
        section = docker.backend_section
        section.refresh()
        self.report["changed"] = {
            "fingerprint": untrusted.fingerprint,
            "line": section.certificate.text(),
            "connected": self.controller.session.connected,
            "trust_button": section.trust_button.isVisibleTo(section),
            "pin": self.controller.settings.server_pin,
            "message": self.controller.message,
        }
        section.grab().save(str(OUT / "krita-changed.png"))
        self.finish()
