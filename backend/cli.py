"""Command line: ``python -m backend {generate,serve,make-tiny}``."""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from backend.engine.preview_budget import DEFAULT_PREVIEW_SHARE
from backend.generate_command import add_job_arguments, add_refine_arguments, run_generate
from backend.model_options import add_model_arguments, load_plan, model_spec

log = logging.getLogger("backend")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m backend", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true")
    commands = parser.add_subparsers(dest="command", required=True)

    gen = commands.add_parser("generate", help="run one InstantStyle job and write PNG files")
    add_job_arguments(gen)
    add_refine_arguments(gen)
    add_model_arguments(gen)

    serve = commands.add_parser("serve", help="run the WebSocket server")
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--port", type=int, default=8765)
    serve.add_argument(
        "--token", help="required from clients (env INSTANTSTYLE_TOKEN); mandatory off loopback"
    )
    serve.add_argument("--max-side", type=int, default=2048, help="largest width/height accepted")
    serve.add_argument(
        "--max-canvas-side",
        type=int,
        default=8192,
        help="largest width/height of a job made at a canvas's own resolution (generate.refine)",
    )
    serve.add_argument("--log-json", action="store_true", help="log one JSON object per line")
    serve.add_argument(
        "--exit-with-stdin",
        action="store_true",
        help="shut down when stdin closes (the process that started the server is gone): for launchers",
    )
    serve.add_argument(
        "--preview-budget",
        type=float,
        metavar="PERCENT",
        default=DEFAULT_PREVIEW_SHARE * 100,
        help="step previews cost at most this share of each job's denoising time, the first step's "
        "and the result's always shown, at most ten a second (default %(default)g)",
    )
    serve.add_argument(
        "--no-warm-up", action="store_true", help="skip the small job that warms the model up after loading"
    )
    serve.add_argument(
        "--ray",
        metavar="local|auto|ADDRESS",
        help="run jobs on Ray workers, one per GPU, each with its own copy of the model: 'local' starts Ray "
        "here (every GPU of this machine), 'auto' joins the cluster this machine belongs to, ADDRESS joins "
        "another (head:6379 or ray://head:10001); see docs/SCALING.md",
    )
    serve.add_argument(
        "--workers", type=int, help="with --ray: how many workers (default: one per GPU of the cluster, or 1)"
    )
    from backend.server.network_options import add_network_arguments

    add_network_arguments(serve)
    add_model_arguments(serve)

    doctor = commands.add_parser(
        "doctor", help="what this machine runs and whether a job works: text for a bug report"
    )
    from backend.doctor import add_doctor_arguments

    add_doctor_arguments(doctor)
    add_model_arguments(doctor)

    models = commands.add_parser(
        "models", help="the model's files from the hub: --plan (sizes, free disk) or --download, as JSON"
    )
    from backend.models_command import add_models_arguments

    add_models_arguments(models)
    add_model_arguments(models)

    tiny = commands.add_parser("make-tiny", help="write the tiny test model in every layout")
    tiny.add_argument("--out", type=Path, help="folder (default: the user cache)")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run a command; expected failures (bad input, missing files) print one line, not a traceback."""
    from backend.engine.blocks import BlockMapError
    from backend.engine.content_text import ContentTextUnavailable
    from backend.engine.loading import ModelLoadError
    from backend.engine.request import RequestError
    from backend.engine.style_embedding import EmbeddingSpaceMismatch
    from backend.preflight import ArgumentError
    from backend.server.config import ConfigError
    from backend.server.ray_pool import RayUnavailable
    from backend.threads import ThreadCountError

    try:
        return _run(argv)
    except (
        RequestError,
        BlockMapError,
        ModelLoadError,
        EmbeddingSpaceMismatch,
        ContentTextUnavailable,
        ConfigError,
        ArgumentError,
        OSError,
        json.JSONDecodeError,
        RayUnavailable,
        ThreadCountError,
    ) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2


def serve_on_ray(args: argparse.Namespace) -> int:
    """``serve --ray``: the same server, its jobs run by a pool of Ray actors."""
    from backend.preflight import ArgumentError
    from backend.server.app import run_server
    from backend.server.ray_actor import ActorPlan
    from backend.server.ray_pool import RaySettings, RayWorkerPool, check_worker_device, connect
    from backend.threads import requested_threads

    if args.workers is not None and args.workers < 1:
        raise ArgumentError(f"--workers {args.workers}: expected 1 or more")
    check_worker_device(args.device)  # before Ray starts: one line
    settings = RaySettings(args.ray, args.workers)
    owns_ray = connect(settings)  # one line (RayUnavailable) when Ray cannot be reached
    spec = model_spec(args)
    plan = ActorPlan(
        spec,
        args.device,
        args.dtype,
        args.memory_tier,
        args.compile,
        torch_threads=requested_threads(args.threads),
        warm_up=not args.no_warm_up,
    )
    pool = RayWorkerPool(plan, settings, owns_ray)
    return run_server(args, pool.load_plan_info(), lambda report: pool.start(report))


def _run(argv: list[str] | None) -> int:
    args = build_parser().parse_args(argv)
    from backend.server.logs import configure_logging

    level = logging.DEBUG if args.verbose else logging.INFO
    configure_logging(level, json_lines=args.command == "serve" and args.log_json)
    if args.command == "make-tiny":
        from backend.tiny.layouts import ensure_tiny_model

        print(ensure_tiny_model(args.out).root)
        return 0
    from backend.preflight import check_model_arguments, check_port
    from backend.threads import describe_numerics, pin_threads

    pin_threads(args.threads)  # a bad count is an argument error like the others
    check_model_arguments(args)
    if args.command == "generate":
        return run_generate(args)
    if args.command == "models":
        from backend.models_command import run_models

        return run_models(args)
    if args.command == "doctor":
        from backend.doctor import run_doctor

        return run_doctor(args)
    from backend.engine.engine import InstantStyleEngine
    from backend.server.app import config_from_args, run_server
    from protocol import ModelPhase, ModelStatus

    config = config_from_args(args)
    config.check()
    check_port(config.host, config.port)
    if args.ray:
        return serve_on_ray(args)  # each actor pins its own threads
    log.info("torch: %s", describe_numerics())  # what decides the last bits of a CPU job's pixels
    plan = load_plan(args)

    def load(report):  # on the server's loading thread, while it already accepts clients
        engine = InstantStyleEngine.load_planned(plan, report)
        if not args.no_warm_up:
            report(ModelStatus(ModelPhase.WARMING_UP, "Warming up (a 512x512, 2-step job)"))
            log.info("warmed up in %.1f s (a 512x512, 2-step job)", engine.warm_up())
        return engine

    return run_server(args, plan, load)
