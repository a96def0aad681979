"""The plugin's pixel hand-off without numpy: channel swaps and 16-bit conversion at canvas sizes.

    .venv/bin/python bench/bench_plugin_pixels.py

Krita-ai-diffusion users report multi-second hangs applying 2k-4k results; the
plugin converts with byte slicing (C speed), never per-pixel Python. Median of 5.
"""

from __future__ import annotations

import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from krita_plugin.instantstyle.pixels import swap_red_blue, to_8bit, to_16bit


def median_ms(function, data: bytes) -> float:
    times = []
    for _ in range(5):
        start = time.perf_counter()
        function(data)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1000


def main() -> None:
    for side in (1024, 2048, 4096):
        rgba = bytes(side * side * 4)
        sixteen = to_16bit(rgba)
        print(
            f"{side}x{side}: RGBA->BGRA {median_ms(swap_red_blue, rgba):7.1f} ms, "
            f"8->16 bit {median_ms(to_16bit, rgba):7.1f} ms, 16->8 bit {median_ms(to_8bit, sixteen):7.1f} ms"
        )


if __name__ == "__main__":
    main()
