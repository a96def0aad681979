"""The server under each attack for longer than the tests run them: peak resident memory over the
baseline, whether a normal job still succeeds, and how long SIGTERM takes with every probe at once.

    HF_HUB_OFFLINE=1 .venv/bin/python bench/bench_server_attacks.py [--seconds 10] [--max-side 2048]

Prints a Markdown table for docs/RELIABILITY.md (one run, this machine; the server runs the tiny model
on the CPU, so a job's own working memory is small and what remains is what clients make it hold).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from backend.client import InstantStyleClient
from tests.attack_probes import PROBES, STYLE, ServerProcess, a_normal_job
from tests.server_helpers import generate_message


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--max-side", default="2048")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp())
    rows = []
    server = ServerProcess("--max-side", args.max_side, log=scratch / "serve.log")
    try:
        asyncio.run(a_normal_job(server.url))
        print(f"baseline RSS after one job: {server.rss_kib() / 1024:.0f} MiB", flush=True)
        for name, probe in PROBES.items():
            baseline = server.rss_kib()
            started = time.monotonic()
            with server.sampling():
                asyncio.run(probe(server.url, args.seconds))
            seconds = time.monotonic() - started
            ok = asyncio.run(a_normal_job(server.url))
            growth = (server.peak_kib - baseline) / 1024
            rows.append(f"| {name} | {growth:.0f} MiB | {seconds:.0f} s | {'yes' if ok else 'NO'} |")
            print(rows[-1], flush=True)
    finally:
        server.stop()

    server = ServerProcess("--max-side", args.max_side, log=scratch / "serve-term.log")

    async def everything_then_sigterm() -> tuple[float, str]:
        async with InstantStyleClient.connect(server.url, client="listener") as listener:
            await listener.submit(generate_message(1, steps=150, width=512, height=512), {0: STYLE})
            probes = [asyncio.create_task(probe(server.url, 60)) for probe in PROBES.values()]
            await asyncio.sleep(args.seconds)
            took = await asyncio.to_thread(server.stop)
            told = await listener.follow(1)
            for task in probes:
                task.cancel()
            await asyncio.gather(*probes, return_exceptions=True)
            return took, told.error.code.value if told.error else "nothing"

    took, told = asyncio.run(everything_then_sigterm())
    print("\n| probe (tiny model, CPU) | peak RSS over baseline | probe ran | normal job after |")
    print("|---|---|---|---|")
    print("\n".join(rows))
    print(f"\nSIGTERM with every probe running: exited in {took:.2f} s; the listening client was told {told}")


if __name__ == "__main__":
    main()
