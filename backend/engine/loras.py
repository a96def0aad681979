"""LoRAs: loaded once at start with diffusers' own loader (PEFT), chosen per job with weights.

``load_lora_weights`` reads both the diffusers/PEFT key layout and the Kohya layout
(``lora_unet_input_blocks_…``, ``lora_te1_…``) that community LoRAs use. Every LoRA
stays loaded as a named adapter; a job only calls ``set_adapters`` with its names
and weights, so switching never reloads the model (``bench/bench_live.py`` measures
the switch). A file that fails to load is left out with a one-line reason naming it:
the model and the other LoRAs keep serving.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch

from protocol.limits import MAX_LORAS

from .loading import LoraSource, ModelLoadError, load_errors
from .request import LoraSelection, RequestError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class LoraInfo:
    """A loaded LoRA: what it changes (a LoRA that touches a text encoder changes prompt encodings)."""

    name: str
    components: tuple[str, ...]

    @property
    def changes_text(self) -> bool:
        return any(part.startswith("text_encoder") for part in self.components)


class LoraSet:
    """The LoRAs loaded into one pipeline, and which of them are active at which weight."""

    def __init__(self, pipeline: object) -> None:
        self.pipeline = pipeline
        self.loaded: dict[str, LoraInfo] = {}
        self.failed: dict[str, str] = {}
        """Name -> why it could not be loaded (one line, naming the file)."""
        self.duplicates: list[str] = []
        """One line for each source left out because its name was taken (the first keeps it)."""
        self._active: LoraSelection | None = ()

    def load(self, sources: Sequence[LoraSource], cache_dir: str | None, local_files_only: bool) -> None:
        """Load each LoRA as a named adapter; one that fails is recorded and skipped."""
        for source in sources:
            if source.name in self.loaded or source.name in self.failed:
                self.duplicates.append(
                    f"LoRA {source.name!r} is named twice; {source.location} was left out "
                    "(each needs its own name)"
                )
                log.error("%s", self.duplicates[-1])
                continue
            try:
                self._load_one(source, cache_dir, local_files_only)
            except ModelLoadError as error:
                self.failed[source.name] = f"LoRA {source.name!r} was not loaded: {one_line(error)}"
                log.error("%s", self.failed[source.name])
        self._active = None  # unknown after loading: the next job sets it

    def _load_one(self, source: LoraSource, cache_dir: str | None, local_files_only: bool) -> None:
        path = source.resolve(cache_dir, local_files_only)
        before = self._components_by_adapter()
        try:
            with (
                load_errors(str(path), "an SDXL LoRA (diffusers/PEFT or Kohya layout) matching this model"),
                warnings.catch_warnings(),
            ):
                # PEFT warns about every adapter after the first; several are what we want.
                warnings.filterwarnings("ignore", message="Already found a `peft_config`")
                self.pipeline.load_lora_weights(str(path), adapter_name=source.name)  # type: ignore[attr-defined]
                components = self._components_by_adapter().get(source.name, ())
                if not components:
                    raise ModelLoadError(
                        path, "an SDXL LoRA", "none of its weights match this model's layers"
                    )
        except ModelLoadError:
            if source.name in self._components_by_adapter() and source.name not in before:
                with warnings.catch_warnings():  # "adapter ... was active which is now deleted"
                    warnings.simplefilter("ignore")
                    self.pipeline.delete_adapters(source.name)  # type: ignore[attr-defined]  # half-loaded
            raise
        self.loaded[source.name] = LoraInfo(source.name, tuple(components))
        log.info("LoRA %s from %s (%s)", source.name, path, ", ".join(components))

    def _components_by_adapter(self) -> dict[str, tuple[str, ...]]:
        if not hasattr(self.pipeline, "get_list_adapters"):
            return {}
        found: dict[str, list[str]] = {}
        for component, names in self.pipeline.get_list_adapters().items():  # type: ignore[attr-defined]
            for name in names:
                found.setdefault(name, []).append(component)
        return {name: tuple(parts) for name, parts in found.items()}

    def check(self, selection: LoraSelection) -> None:
        """A clear error for a job naming a LoRA this server does not have."""
        if len(selection) > MAX_LORAS:
            raise RequestError(f"at most {MAX_LORAS} LoRAs per job, got {len(selection)}")
        names = [name for name, _ in selection]
        if len(set(names)) != len(names):
            raise RequestError("a LoRA is named twice in this job")
        for name in names:
            if name in self.failed:
                raise RequestError(self.failed[name])
            if name not in self.loaded:
                available = ", ".join(sorted(self.loaded)) or "none"
                raise RequestError(f"LoRA {name!r} is not loaded on this server (available: {available})")

    def activate(self, selection: LoraSelection) -> None:
        """Make exactly ``selection`` active (nothing is done when it already is)."""
        self.check(selection)
        if selection == self._active or not self.loaded:
            return
        if selection:
            self.pipeline.enable_lora()  # type: ignore[attr-defined]
            self.pipeline.set_adapters(  # type: ignore[attr-defined]
                [name for name, _ in selection], [weight for _, weight in selection]
            )
        else:
            self.pipeline.disable_lora()  # type: ignore[attr-defined]
        self._active = selection

    def text_state(self, selection: LoraSelection) -> LoraSelection:
        """The part of a selection that changes prompt encodings (a cache key)."""
        return tuple((name, weight) for name, weight in selection if self.loaded[name].changes_text)


def one_line(error: ModelLoadError) -> str:
    """A loading error as one line: PyTorch lists every mismatched matrix, one per line."""
    text = str(error)
    mismatches = [line.strip() for line in text.splitlines() if line.strip().startswith("size mismatch")]
    if mismatches:
        return (
            f"cannot load {error.path}: its matrices do not fit this model's layers (a LoRA for another "
            f"base model?), e.g. {mismatches[0][:300]}"
        )
    return " ".join(text.split())[:1000]


@contextlib.contextmanager
def without_lora(module: torch.nn.Module) -> Iterator[None]:
    """Run ``module`` as it was trained, its LoRA layers (if any) bypassed: InstantStyle's content
    subtraction works in CLIP's own shared image-text space, which a text-encoder LoRA would move."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    layers = [layer for layer in module.modules() if isinstance(layer, BaseTunerLayer)]
    enabled = [layer for layer in layers if not layer.disable_adapters]
    for layer in enabled:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in enabled:
            layer.enable_adapters(True)
