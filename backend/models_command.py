"""``python -m backend models``: what a model needs from the hub, and fetching it, as JSON for a launcher.

The plugin's managed backend shows a checklist with sizes and the free disk space **before**
anything downloads (``--plan``), then downloads with progress (``--download``, one JSON object per
line). Files already in the hub cache count as done; an interrupted download is taken up again
from the files still missing (huggingface_hub keeps a partial file apart and never uses it), and a
file is only in the cache once complete and checked against the hub's ETag (the sha256 of
LFS files).
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import threading
from pathlib import Path


def add_models_arguments(parser: argparse.ArgumentParser) -> None:
    what = parser.add_mutually_exclusive_group(required=True)
    what.add_argument("--plan", action="store_true", help="print the files, their sizes and the free disk")
    what.add_argument("--download", action="store_true", help="fetch what is missing, printing progress")


def cache_folder(cache_dir: str | None) -> Path:
    from huggingface_hub import constants

    return Path(cache_dir or constants.HF_HUB_CACHE)


def free_bytes(folder: Path) -> int:
    """Free space on the disk that holds ``folder`` (its nearest existing parent, before it exists)."""
    while not folder.exists() and folder.parent != folder:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def is_cached(repo_id: str, path: str, cache_dir: str | None) -> bool:
    from huggingface_hub import try_to_load_from_cache

    return isinstance(try_to_load_from_cache(repo_id, path, cache_dir=cache_dir), str)


def run_models(args: argparse.Namespace) -> int:
    from backend.engine.content_text import planned_tower, tower_files
    from backend.engine.downloads import (
        DownloadProgress,
        fetch,
        hub_json,
        hub_sizes,
        plan_downloads,
        wanted_from_hub,
    )
    from backend.engine.loading import load_errors
    from backend.model_options import load_plan

    plan = load_plan(args)
    spec = plan.spec
    folders, singles = wanted_from_hub(spec, plan.dtype)
    where = ", ".join(sorted({f.repo_id for f in folders} | {repo for repo, _ in singles}))
    files = []
    if folders or singles:  # a model on disk needs nothing from the hub
        with load_errors(where, "model files from the Hugging Face hub"):
            files = plan_downloads(folders, singles, hub_sizes, hub_json(spec.cache_dir))
    tower = planned_tower(spec)  # content subtraction's text tower, downloaded at start too
    if tower is not None:
        with load_errors(tower, "a CLIP text tower on the Hugging Face hub"):
            files += tower_files(tower, hub_sizes(tower))
    cached = {(f.repo_id, f.path) for f in files if is_cached(f.repo_id, f.path, spec.cache_dir)}
    total = sum(f.size for f in files)
    missing = sum(f.size for f in files if (f.repo_id, f.path) not in cached)
    if args.plan:
        free = free_bytes(cache_folder(spec.cache_dir))
        listing = [
            {"repo": f.repo_id, "path": f.path, "bytes": f.size, "cached": (f.repo_id, f.path) in cached}
            for f in files
        ]
        summary = {"total_bytes": total, "missing_bytes": missing, "free_bytes": free, "fits": missing < free}
        # What this machine will run it as: the docker shows it beside the sizes, before any download.
        machine = {"device": str(plan.device), "memory_tier": plan.memory_tier.value}
        print(json.dumps({"files": listing, **summary, **machine}))
        return 0

    # Files download in parallel, each thread reporting: one whole line at a time, never an older
    # count after a newer one (a thread may report after another that counted later).
    written = threading.Lock()
    shown = [(-1, -1)]

    def report(progress: DownloadProgress) -> None:
        fields = ("bytes_done", "bytes_total", "files_done", "files_total")
        line = json.dumps({name: getattr(progress, name) for name in fields}) + "\n"
        with written:
            if (progress.bytes_done, progress.files_done) < shown[0]:
                return
            shown[0] = (progress.bytes_done, progress.files_done)
            sys.stdout.write(line)
            sys.stdout.flush()

    with load_errors(where, "model files from the Hugging Face hub"):
        fetch(files, report, spec.cache_dir)
    print(json.dumps({"done": True, "bytes_total": total}), flush=True)
    return 0
