"""The InstantStyle engine: diffusers' SDXL or SD1.5 pipelines plus style-block injection.

One engine holds one loaded model and runs one job at a time. It is
deliberately thin over diffusers: ``set_ip_adapter_scale`` with a per-block map
does the block targeting, ``ip_adapter_image_embeds`` carries the
content-subtracted style embedding, and ``callback_on_step_end`` provides the
per-step previews and the cancellation point. It knows nothing of sockets.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import threading
import time
from collections.abc import Callable

import numpy as np
import torch

from protocol.enums import BlockPreset, ControlKind, Mode
from protocol.messages import ModelFeatures, ModelStatus

from .adapters import adapter_info
from .auto_search import SearchContext, run_auto, with_plan
from .blocks import AppliedScales, UNetAttentionLayout, build_scale_map
from .call_kwargs import check_family_request, pipeline_kwargs
from .content_text import prefetch_tower
from .control import ControlNets, offered_modes, pipeline_key
from .csd import CsdModel
from .decode import check_finite, decode, set_decode_tiles
from .engine_features import engine_features, loaded_speed_presets
from .engine_loading import load_parts
from .family import family_of
from .load_plan import EngineInfo, LoadPlan, download_status, engine_info
from .loading import ModelSpec
from .loras import LoraSet
from .memory import MemoryTier, unet_alone, visiting
from .mode_pipelines import mode_pipeline
from .precise import PreciseLayout
from .preview_vae import LoadedPreviewVae
from .previews import DenoisedCapture, PreviewStream, StepPreview, job_previews, result_preview
from .prompt_cache import PromptCache
from .refine import run_refined
from .request import GenerationRequest, GenerationResult, JobCancelled
from .samplers import JobSchedulers
from .scores import score_images
from .speed_presets import SpeedPreset
from .step_noise import step_noise_on_device
from .style_setup import style_encoder_for
from .sweep import run_sweep
from .warm_up import warm_up

log = logging.getLogger(__name__)

StepCallback = Callable[[StepPreview], None]
StatusCallback = Callable[[ModelStatus], None]


class InstantStyleEngine:
    """Runs InstantStyle jobs on one loaded SDXL or SD1.5 + IP-Adapter model."""

    def __init__(
        self,
        pipeline: object,
        spec: ModelSpec,
        cache_size: int = 64,
        controlnet: torch.nn.Module | None = None,
        memory_tier: MemoryTier = MemoryTier.FULL,
        device: torch.device | None = None,
        loras: LoraSet | None = None,
        prompt_cache_size: int = 32,
        preview_vae: LoadedPreviewVae | None = None,
        tile_controlnet: torch.nn.Module | None = None,
        csd: CsdModel | None = None,
    ) -> None:
        """``device``: where jobs run (default: where the UNet's weights are, i.e. the full tier);
        ``loras``: the LoRAs loaded into ``pipeline`` (``load_planned`` loads those of the spec);
        ``preview_vae``: the tiny autoencoder for previews (None: the linear previews);
        ``controlnet``/``tile_controlnet``: what ``control`` jobs keep (the edges, the picture);
        ``csd``: the style metric's model (None: CLIP scores style)."""
        self.pipeline = pipeline
        self.memory_tier = memory_tier
        self._device = device or pipeline.unet.device  # type: ignore[attr-defined]
        self.spec = spec
        self.family = family_of(pipeline)
        self.layout = UNetAttentionLayout.of(pipeline.unet)  # type: ignore[attr-defined]
        self.preset_blocks = self.family.preset_blocks(self.layout)
        self.adapter = adapter_info(pipeline, spec)
        self.encoder = style_encoder_for(
            pipeline, spec, self.family, self.adapter.kind, self._device, cache_size
        )
        self.controlnet = controlnet
        self.controlnets = ControlNets(controlnet, tile_controlnet)
        self._pipelines: dict[tuple[Mode, ControlKind | None], object] = {(Mode.TXT2IMG, None): pipeline}
        self.schedulers = JobSchedulers(pipeline.scheduler)  # type: ignore[attr-defined]
        self._dtype: torch.dtype = pipeline.unet.dtype  # type: ignore[attr-defined]
        """Read once: diffusers' ``dtype`` walks every module of the UNet (~2 ms a job on the tiny model)."""
        self.loras = loras or LoraSet(pipeline)
        self.precise = PreciseLayout(pipeline.unet, self.preset_blocks["layout_push"])  # type: ignore[attr-defined]
        self._running_previews: PreviewStream | None = None
        """The step previews of the job running now (``flush_previews``)."""
        self.applied_scales = AppliedScales()
        self.prompts = PromptCache(prompt_cache_size)
        self.preview_vae = preview_vae or LoadedPreviewVae(None, "none")
        if self.preview_vae.vae is not None:  # ~10 MB: it stays where jobs run, whatever the tier
            self.preview_vae.vae.to(self._device)
        # A batch decodes one image at a time: up to 8 fp32 1024² decodes at once took ~3.8 GiB each.
        pipeline.vae.enable_slicing()  # type: ignore[attr-defined]
        self._lock = threading.Lock()
        self.load_problems: list[str] = []
        """One line for each optional part that could not be had at start (the content text tower)."""
        self.compiled = False
        self.csd = csd

    @classmethod
    def load(
        cls,
        spec: ModelSpec,
        device: str | None = None,
        dtype: str | None = None,
        memory_tier: str | None = "auto",
        on_status: StatusCallback | None = None,
    ) -> InstantStyleEngine:
        return cls.load_planned(LoadPlan.make(spec, device, dtype, memory_tier), on_status)

    @classmethod
    def load_planned(cls, plan: LoadPlan, on_status: StatusCallback | None = None) -> InstantStyleEngine:
        """Download what is missing, load, and place the model by its memory tier, telling ``on_status``
        about each phase (and the bytes while downloading)."""
        report = on_status or (lambda status: None)
        parts = load_parts(plan, report)
        engine = cls(
            parts.pipeline,
            plan.spec,
            controlnet=parts.controlnet,
            memory_tier=plan.memory_tier,
            device=plan.device,
            loras=parts.loras,
            preview_vae=parts.preview_vae,
            tile_controlnet=parts.tile_controlnet,
            csd=parts.csd,
        )
        for problem in plan.problems:  # said in the log and to every client (features.problems)
            log.warning("%s", problem)
            engine.load_problems.append(problem)
        tower = engine.encoder.content_tower
        if tower is not None:  # downloaded now with the model's progress, loaded by the first job that asks
            problem = prefetch_tower(
                plan.spec, tower.source, lambda progress: report(download_status(progress))
            )
            if problem:
                engine.load_problems.append(problem)
        if plan.compile:
            engine.compile_unet()
        return engine

    @property
    def modes(self) -> list[Mode]:
        """What this engine can run: ``control`` needs a ControlNet (canny or tile)."""
        return offered_modes(self.controlnets.kinds)

    @property
    def speed_presets(self) -> list[SpeedPreset]:
        """The speed presets asked for at start whose LoRA loaded."""
        return loaded_speed_presets(self)

    @property
    def features(self) -> ModelFeatures:
        """What clients are told once the model is ready."""
        return engine_features(self)

    @property
    def device(self) -> torch.device:
        """Where jobs run (offloaded weights rest in CPU memory in between)."""
        return self._device

    @property
    def native_side(self) -> int:
        """The side in pixels the UNet was trained at (1024 for SDXL, 512 for SD1.5): jobs above it
        refine in tiles."""
        sample = self.pipeline.unet.config.sample_size  # type: ignore[attr-defined]
        return int(sample[0] if isinstance(sample, (list, tuple)) else sample) * 8

    @property
    def dtype(self) -> torch.dtype:
        """The weights' dtype, fixed when the model is loaded."""
        return self._dtype

    @property
    def info(self) -> EngineInfo:
        return engine_info(self.spec, self.device, self.dtype, self.memory_tier)

    def pipeline_for(self, mode: Mode, control: ControlKind = ControlKind.EDGES) -> object:
        """The pipeline for a mode (``mode_pipelines.py``) and, for ``control``, the kind of control (its
        ControlNet: a job asking for one not loaded is refused in one line), made on its first job."""
        key = pipeline_key(mode, control)
        if key not in self._pipelines:
            net = self.controlnets.for_kind(control, self.family) if mode is Mode.CONTROL else None
            self._pipelines[key] = mode_pipeline(self.pipeline, mode, net, self.dtype)
        return self._pipelines[key]

    def scale_map(self, request: GenerationRequest) -> dict[str, object]:
        return build_scale_map(
            self.layout, request.preset, request.style_scale, request.block_scales, self.preset_blocks
        )

    def pipeline_kwargs(self, request: GenerationRequest) -> dict[str, object]:
        """Everything the diffusers pipeline is called with, except the callback (``call_kwargs.py``)."""
        return pipeline_kwargs(self, request)

    def prepare(self, request: GenerationRequest) -> tuple[object, dict[str, object]]:
        """Select the pipeline, set its per-block IP-Adapter scales, and build its call arguments.

        Calling ``pipe(**kwargs)`` afterwards is exactly what ``generate`` runs, minus the callback; it
        returns latents, which ``decode.decode(pipe, latents)`` turns into the pictures.
        """
        request.validate()
        pipe = self.pipeline_for(request.mode, request.control)
        self.precise.set(None)  # diffusers sets the scales of its own processors only
        self.applied_scales.apply(pipe, self.pipeline.unet, self.scale_map(request))  # type: ignore[attr-defined]
        if request.preset is BlockPreset.PRECISE and request.layout_push > 0:
            self.precise.set(request.layout_push)  # at 0 nothing is pushed: exactly the style preset
        self.loras.activate(request.loras)  # before the prompt is encoded: a LoRA may change it
        pipe.scheduler = self.schedulers.fresh(request.sampler)  # type: ignore[attr-defined]
        # The VAE is shared by every mode's pipeline: its tiling is set per job.
        longest = max(request.width, request.height)
        set_decode_tiles(self.pipeline.vae, self.memory_tier.tiles_vae, longest)  # type: ignore[attr-defined]
        return pipe, self.pipeline_kwargs(request)

    def generate(
        self,
        request: GenerationRequest,
        on_step: StepCallback | None = None,
        cancel: threading.Event | None = None,
    ) -> GenerationResult:
        """Run one job; ``on_step`` sees every step, ``cancel`` stops it at the next one. A sweep runs
        its cells one after the other: the style, content and prompt encodings are cached after the
        first, so each cell costs what a single job with those settings costs."""
        started = time.perf_counter()
        check_family_request(self, request)
        with self._lock:
            if request.auto is not None:
                context = with_plan(request, self.features).search_context
                assert isinstance(context, SearchContext)
                result = run_auto(request, self.generate_one, on_step, cancel, context, self._render)
            else:
                result = self._render(request, on_step, cancel)
        result.seconds = time.perf_counter() - started
        return result

    def _render(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: threading.Event | None
    ) -> GenerationResult:
        """A job without ``auto`` (with the lock held): a canvas refines, a sweep runs its cells."""
        if request.refine is not None:
            unet = self.pipeline.unet  # type: ignore[attr-defined]
            return run_refined(
                request, self.generate_one, unet, self.native_side, on_step, cancel, self.flush_previews
            )
        if request.sweep:
            return run_sweep(request, self.generate_one, on_step, cancel)
        return self.generate_one(request, on_step, cancel)

    def flush_previews(self) -> None:
        """Hand over the running job's held step preview now (a tiled step reports its tiles after
        the step before it, which a GPU's deferred preview would otherwise hold until its end)."""
        if self._running_previews is not None:
            self._running_previews.flush()

    def generate_one(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: threading.Event | None
    ) -> GenerationResult:
        """One job (with the lock held): denoise, decode, score."""
        try:
            images = self._denoise_and_decode(request, on_step, cancel)
        finally:
            self.precise.set(None)  # at rest the UNet has only diffusers' own processors
            self._running_previews = None
        references = request.style_images + [ref for region in request.regions for ref in region.style_images]
        scores = score_images(
            self.encoder,
            images,
            [ref.image for ref in references],
            [ref.weight for ref in references],
            request.content_text,
            request.prompt,
            self.csd,
        )
        return GenerationResult(
            images=images,
            seeds=[request.seed + i for i in range(request.batch)],
            model_label=self.spec.label,
            is_test_model=self.spec.is_test_model,
            scale_map=self.scale_map(request),
            scores=scores,
        )

    def _denoise_and_decode(
        self, request: GenerationRequest, on_step: StepCallback | None, cancel: threading.Event | None
    ) -> list[np.ndarray]:
        """``generate``'s work (with the lock held): the pipeline's denoising, then the engine's decode
        into uint8 pictures."""
        pipe, kwargs = self.prepare(request)
        capture = DenoisedCapture()
        previews = job_previews(request, on_step, self.device, self.preview_vae.vae, self.family.family)
        self._running_previews = previews
        last: tuple[int, torch.Tensor] | None = None
        """The last step and its latents: its preview is the result itself, once decoded."""

        def step_end(p: object, index: int, _t: object, tensors: dict[str, torch.Tensor]) -> dict:
            nonlocal last
            if cancel is not None and cancel.is_set():
                if previews is not None:
                    previews.flush()  # the last step that ran is shown, as without deferral
                raise JobCancelled
            if previews is not None:
                latents = tensors["latents"]
                shown = capture.latest if capture.latest is not None else latents
                total = int(p.num_timesteps)  # type: ignore[attr-defined]
                if index + 1 < total or previews.budget is None:
                    previews.push(index + 1, total, shown, latents)
                else:
                    last = (total, latents)
            return tensors

        if cancel is not None and cancel.is_set():
            raise JobCancelled
        # Below the full tier the ControlNet rests in CPU memory and visits the GPU for its jobs only.
        visitor = self.controlnets.visitor(request)
        with (
            capture.attached(pipe.scheduler),  # type: ignore[attr-defined]
            step_noise_on_device(pipe.scheduler, self.device, request.seed, request.batch),  # type: ignore[attr-defined]
            torch.inference_mode(),
            visiting(visitor, self.device) if visitor is not None else contextlib.nullcontext(),
            unet_alone(self.pipeline),
        ):
            latents = pipe(  # type: ignore[operator]
                **kwargs,
                callback_on_step_end=step_end,
                callback_on_step_end_tensor_inputs=["latents"],
            ).images
            if previews is not None:
                previews.flush()
        with torch.inference_mode():  # a visiting ControlNet has left: it is not beside the decode
            check_finite(latents, "latents")
            images = [to_uint8(image) for image in decode(pipe, latents)]
        if previews is not None and last is not None:
            step, latents = last
            picture = result_preview(images[0], previews.last_side) if request.step_pictures else None
            previews.last(step, step, picture, latents)
        return images

    def compile_unet(self, backend: str | Callable[..., object] = "inductor") -> None:
        """``torch.compile`` the UNet's repeated transformer blocks (diffusers' regional compilation:
        one compiled block serves every block of its shape, so compiling takes seconds, not minutes).

        The IP-Adapter's per-block scale is a Python float that PyTorch treats as dynamic: changing the
        style strength never recompiles. A block whose scale is 0 takes another branch (diffusers skips
        its image attention), so the warm-up runs both kinds of preset: switching presets later does not
        recompile either (tested with a counting backend on the tiny model).
        """
        self.pipeline.unet.compile_repeated_blocks(backend=backend)  # type: ignore[attr-defined]
        self.compiled = True

    def warm_up(self, size: int = 512, steps: int = 2) -> float:
        """One small job right after loading (``warm_up.py``); returns its seconds."""
        return warm_up(self, size, steps)

    def release_memory(self) -> None:
        """Give the accelerator's cached blocks back after a failed job.

        Call it once the failure's exception (and its traceback, which holds the job's tensors) is gone,
        never after a successful job: re-allocating gigabytes for the next job costs time.
        """
        gc.collect()  # tensors caught in reference cycles of the failed call
        if self.device.type == "cuda":
            torch.cuda.empty_cache()
        elif self.device.type == "mps":
            torch.mps.empty_cache()


def to_uint8(image: np.ndarray) -> np.ndarray:
    """diffusers' float [0, 1] HWC output as uint8, rounded like PIL does."""
    return (np.clip(image, 0.0, 1.0) * 255.0).round().astype(np.uint8)
