"""Fetching hub weights before loading them, with progress an artist can watch.

``from_pretrained`` downloads what it needs with console bars but tells its caller
nothing. The engine therefore fetches the same files first, through
``huggingface_hub.hf_hub_download`` (whose console bars stay on), counting the
bytes as they arrive; the loaders then find every file in the hub cache. If this
list ever misses a file, the loader still downloads it itself: progress is then
incomplete, loading is not.

Which files a loader reads from a model folder: its config and tokenizer files,
and the ``.safetensors`` weights of the wanted variant (``fp16``) where the
folder has them, else the plain ones. A folder with only ``.bin`` weights gets
those. Nothing else (example images, ONNX exports, other variants) is fetched.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import torch

from backend.engine.family import traits
from backend.engine.loading import SINGLE_FILE_SUFFIXES, ModelSpec, is_local, load_errors
from backend.engine.loading import HubFile as HubPath

SMALL_FILE_SUFFIXES = (".json", ".txt", ".model")
"""Configs, tokenizer vocabularies and merges, sentencepiece models."""
PARALLEL_FILES = 4


@dataclass(frozen=True)
class HubFolder:
    """One model folder inside a hub repo (``subfolder`` "" is the repo's root)."""

    repo_id: str
    subfolder: str = ""
    variant: str | None = None
    pipeline: bool = False
    """A diffusers pipeline repo: the folders are the components named in ``model_index.json``."""
    skip: frozenset[str] = frozenset()
    """Components of that pipeline never loaded (SD1.5's safety checker)."""


@dataclass(frozen=True)
class RemoteFile:
    repo_id: str
    path: str
    size: int


@dataclass(frozen=True)
class DownloadProgress:
    bytes_done: int
    bytes_total: int
    files_done: int
    files_total: int
    seconds: float = 0.0
    """Since the downloads began: with the bytes, what the time left is estimated from."""
    bytes_at_start: int = 0
    """Already on disk when the downloads began (cached files): not part of the rate."""

    @property
    def seconds_left(self) -> float | None:
        """At the rate so far; None until a few seconds and bytes tell a rate."""
        fetched = self.bytes_done - self.bytes_at_start
        if self.seconds < 3 or fetched <= 0 or self.bytes_done >= self.bytes_total:
            return None
        return (self.bytes_total - self.bytes_done) * self.seconds / fetched


def variant_of(filename: str) -> str | None:
    """``fp16`` for ``model.fp16.safetensors`` or ``model.fp16-00001-of-00002.safetensors``, else None."""
    stem = filename.rsplit(".", 1)[0]
    if "." not in stem:
        return None
    return stem.split(".", 1)[1].split("-", 1)[0] or None


def folder_files(listing: Iterable[str], folder: str, variant: str | None) -> list[str]:
    """What a loader reads from ``folder`` (not its subfolders), given every path in the repo."""
    inside = [path for path in listing if str(PurePosixPath(path).parent).lstrip(".") == folder.strip("/")]
    small = [path for path in inside if path.endswith(SMALL_FILE_SUFFIXES)]
    weights: list[str] = []
    for suffix in (".safetensors", ".bin"):
        found = [path for path in inside if path.endswith(suffix)]
        wanted = [path for path in found if variant is not None and variant_of(path) == variant]
        plain = [path for path in found if variant_of(path) is None]
        weights = wanted or plain
        if weights:
            break
    return sorted(small) + sorted(weights)


def pipeline_folders(model_index: dict, skip: frozenset[str] = frozenset()) -> list[str]:
    """The component folders of a diffusers pipeline: entries of ``model_index.json`` naming a class
    (less those in ``skip``)."""
    return sorted(
        name
        for name, value in model_index.items()
        if not name.startswith("_")
        and name not in skip
        and isinstance(value, list)
        and len(value) == 2
        and value[0] is not None
    )


def plan_downloads(
    folders: Iterable[HubFolder],
    single_files: Iterable[tuple[str, str]],
    sizes_of: Callable[[str], dict[str, int]],
    read_json: Callable[[str, str], dict],
) -> list[RemoteFile]:
    """Every file the loaders will read from the hub, with its size.

    ``sizes_of(repo_id)`` lists a repo's files and sizes; ``read_json(repo_id, path)`` reads one
    (``model_index.json``). ``single_files`` are exact ``(repo_id, path)`` pairs, such as an
    IP-Adapter's weights.
    """
    listings: dict[str, dict[str, int]] = {}

    def listing(repo_id: str) -> dict[str, int]:
        if repo_id not in listings:
            listings[repo_id] = sizes_of(repo_id)
        return listings[repo_id]

    chosen: dict[tuple[str, str], int] = {}
    for folder in folders:
        files = listing(folder.repo_id)
        if folder.pipeline:
            chosen[(folder.repo_id, "model_index.json")] = files.get("model_index.json", 0)
            index = read_json(folder.repo_id, "model_index.json")
            names = [f"{folder.subfolder}/{name}".strip("/") for name in pipeline_folders(index, folder.skip)]
        else:
            names = [folder.subfolder]
        for name in names:
            for path in folder_files(files, name, folder.variant):
                chosen[(folder.repo_id, path)] = files[path]
    for repo_id, path in single_files:
        files = listing(repo_id)
        if path not in files:
            raise FileNotFoundError(f"{repo_id} has no file {path}")
        chosen[(repo_id, path)] = files[path]
    return [RemoteFile(repo, path, size) for (repo, path), size in chosen.items()]


class ByteCounter:
    """Adds up the bytes of every file's download, from any thread, and reports the sum.

    Bytes are counted per file and capped at its size; a finished file counts in full, so that the
    sum ends exactly at the total even when a library skips the bar for a small file.
    """

    def __init__(self, files: list[RemoteFile], report: Callable[[DownloadProgress], None]) -> None:
        self.sizes = {(f.repo_id, f.path): f.size for f in files}
        self.total = sum(self.sizes.values())
        self._counted: dict[tuple[str, str], int] = {}
        self._finished: set[tuple[str, str]] = set()
        self._report = report
        self._lock = threading.Lock()
        self._started = time.monotonic()
        self._at_start = 0
        self.current = threading.local()
        """The file the calling thread is downloading: a bar created on it counts for that file."""

    @property
    def progress(self) -> DownloadProgress:
        done = sum(min(count, self.sizes[key]) for key, count in self._counted.items())
        seconds = time.monotonic() - self._started
        files_done = len(self._finished)
        return DownloadProgress(done, self.total, files_done, len(self.sizes), seconds, self._at_start)

    def start_clock(self) -> None:
        """The downloads begin now: what is already done (cached files) is not part of their rate."""
        with self._lock:
            self._at_start = 0
            self._at_start = self.progress.bytes_done
            self._started = time.monotonic()

    def add(self, key: tuple[str, str], count: int) -> None:
        with self._lock:
            self._counted[key] = self._counted.get(key, 0) + count
            progress = self.progress
        self._report(progress)

    def finish(self, key: tuple[str, str], report: bool = True) -> None:
        with self._lock:
            self._counted[key] = self.sizes[key]
            self._finished.add(key)
            progress = self.progress
        if report:
            self._report(progress)


def counting_bar(counter: ByteCounter) -> type:
    """huggingface_hub's console bar class, also counting the bytes it is told about.

    ``update`` is called with the bytes written (plain HTTP and Xet downloads alike; Xet's calls may
    come from another thread, so each bar remembers the file it was created for). Having an
    ``update_transfer`` method makes a Xet download route its network bytes here too instead of
    drawing a second bar; those are not counted twice.
    """
    from huggingface_hub.utils import tqdm as hub_tqdm

    class CountingBar(hub_tqdm):  # type: ignore[misc, valid-type]
        def __init__(self, *args: object, **kwargs: object) -> None:
            self._file = getattr(counter.current, "key", None)
            super().__init__(*args, **kwargs)

        def update(self, n: float | None = 1) -> bool | None:
            if n and self._file is not None:
                counter.add(self._file, int(n))
            return super().update(n)

        def update_transfer(self, n: float | None = 1) -> None:
            """Network bytes of a Xet download: already counted as written bytes in ``update``."""

        def set_transfer_postfix_str(self, postfix: str, refresh: bool = False) -> None:
            """Part of the same Xet interface; the written-bytes bar shows the rate."""

    return CountingBar


def fetch(
    files: list[RemoteFile],
    report: Callable[[DownloadProgress], None],
    cache_dir: str | None = None,
) -> None:
    """Download every file not in the cache yet, a few at a time, reporting bytes as they arrive
    (cached files count as done; with everything cached there is nothing to report)."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache

    counter = ByteCounter(files, report)
    missing = []
    for file in files:
        if isinstance(try_to_load_from_cache(file.repo_id, file.path, cache_dir=cache_dir), str):
            counter.finish((file.repo_id, file.path), report=False)
        else:
            missing.append(file)
    if not missing:
        return
    counter.start_clock()
    report(counter.progress)
    bar = counting_bar(counter)

    def one(file: RemoteFile) -> None:
        counter.current.key = (file.repo_id, file.path)
        try:
            hf_hub_download(file.repo_id, file.path, cache_dir=cache_dir, tqdm_class=bar)
        finally:
            counter.current.key = None
        counter.finish((file.repo_id, file.path))

    with ThreadPoolExecutor(max_workers=PARALLEL_FILES, thread_name_prefix="download") as pool:
        for future in [pool.submit(one, file) for file in missing]:
            future.result()  # the first failure is raised (the others finish or fail on their own)


def hub_sizes(repo_id: str, timeout: float | None = None) -> dict[str, int]:
    """Every file of a repo with its size, from the hub's API."""
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo_id, files_metadata=True, timeout=timeout)
    return {sibling.rfilename: int(sibling.size or 0) for sibling in info.siblings or []}


def hub_json(cache_dir: str | None) -> Callable[[str, str], dict]:
    def read(repo_id: str, path: str) -> dict:
        from huggingface_hub import hf_hub_download

        return json.loads(Path(hf_hub_download(repo_id, path, cache_dir=cache_dir)).read_text("utf-8"))

    return read


def wanted_from_hub(spec: ModelSpec, dtype: torch.dtype) -> tuple[list[HubFolder], list[tuple[str, str]]]:
    """The hub folders and single files that loading ``spec`` reads (local paths need nothing)."""
    variant = "fp16" if dtype == torch.float16 else None
    folders: list[HubFolder] = []
    singles: list[tuple[str, str]] = []
    if Path(spec.base).suffix not in SINGLE_FILE_SUFFIXES and not is_local(spec.base):
        skip = traits(spec.family).skip_components if spec.family is not None else frozenset()
        folders.append(HubFolder(spec.base, variant=variant, pipeline=True, skip=skip))
    if spec.vae and not is_local(spec.vae):
        folders.append(HubFolder(spec.vae))
    if not is_local(spec.image_encoder):
        encoder = HubPath.parse(spec.image_encoder)
        folders.append(HubFolder(encoder.repo_id, encoder.subpath))
    if not is_local(spec.ip_adapter):
        adapter = HubPath.parse(spec.ip_adapter)
        singles.append((adapter.repo_id, adapter.subpath))
    for controlnet in (spec.controlnet_for(kind) for kind in spec.controls):  # canny, tile
        if controlnet and not is_local(controlnet):
            folders.append(HubFolder(controlnet, variant=variant))
    return folders, singles


def prefetch(spec: ModelSpec, dtype: torch.dtype, report: Callable[[DownloadProgress], None]) -> None:
    """Download what loading ``spec`` needs from the hub, reporting progress; nothing when offline."""
    from huggingface_hub import constants

    folders, singles = wanted_from_hub(spec, dtype)
    if spec.local_files_only or constants.HF_HUB_OFFLINE or not (folders or singles):
        return
    where = ", ".join(sorted({f.repo_id for f in folders} | {repo for repo, _ in singles}))
    with load_errors(where, "model files from the Hugging Face hub"):
        files = plan_downloads(folders, singles, hub_sizes, hub_json(spec.cache_dir))
        fetch(files, report, spec.cache_dir)
