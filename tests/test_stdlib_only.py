"""protocol/ and the plugin's Qt-free core run inside Krita: they may import the standard library only."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

SCRIPT = """
import sys
sys.path[:0] = [{repo!r}, {plugin!r}]
import protocol
from instantstyle import connection, errors, pixels, session, settings
from protocol import Generate, StyleImage, decode_client_message, encode_message
message = Generate(job_id=1, prompt="p", style_images=[StyleImage(0)], width=64, height=64)
assert decode_client_message(encode_message(message)) == message
third_party = sorted({{name.split(".")[0] for name in sys.modules}} - set(sys.stdlib_module_names)
                     - {{"protocol", "instantstyle", "__main__"}})
print(third_party)
"""


def test_protocol_and_plugin_core_need_only_the_standard_library():
    # -I: isolated, -S: no site-packages at all, so any third-party import fails loudly.
    script = SCRIPT.format(repo=str(REPO), plugin=str(REPO / "krita_plugin"))
    result = subprocess.run([sys.executable, "-I", "-S", "-c", script], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
