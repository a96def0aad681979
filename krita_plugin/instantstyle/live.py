"""Live mode's decisions, free of Qt and Krita: when a change has settled, and what a live job asks for.

The Krita side computes a cheap signature of the watched layer and selection (a hash of their bytes,
computed in C) a few times a second and feeds it here; ``LiveWatch`` says when to send a job: once a
change has held still for the debounce time, and never twice for the same picture. A stroke made while
a live job runs simply sends the next one: the backend drops or stops the stale job (``live``, latest
wins), so the canvas never trails behind a queue of old strokes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .deps import protocol
from .settings import GenerationSettings, JobKind, LoraChoice

DEBOUNCE_SECONDS = 0.35
"""How long the layer must hold still after a change before a live job goes out."""
CHECK_SECONDS = 0.15
"""How often the watched layer's signature is taken."""


@dataclass
class LiveWatch:
    """Debounces signatures into "send a job now" decisions."""

    debounce: float = DEBOUNCE_SECONDS
    sent: bytes | None = None
    """The signature the last live job was made from."""
    seen: bytes | None = None
    changed_at: float = 0.0

    def observe(self, signature: bytes, now: float) -> bool:
        """Feed the current signature; True when a job should be sent for it."""
        if signature != self.seen:
            self.seen, self.changed_at = signature, now
            # The first look sends at once: turning live on should show something right away.
            return self.sent is None and self._send(signature)
        if signature == self.sent or now - self.changed_at < self.debounce:
            return False
        return self._send(signature)

    def _send(self, signature: bytes) -> bool:
        self.sent = signature
        return True

    def resend(self) -> None:
        """Forget what was sent, e.g. after a live job failed or the settings changed."""
        self.sent = None


def pick_preset(presets: list[protocol.SpeedPresetInfo], wanted: str) -> protocol.SpeedPresetInfo | None:
    """The live preset: the one asked for if the backend offers it, else its first one, else none."""
    return next((p for p in presets if p.name == wanted), presets[0] if presets else None)


def apply_preset(settings: GenerationSettings, preset: protocol.SpeedPresetInfo) -> GenerationSettings:
    """``settings`` with a few-step preset's sampler, steps, guidance and LoRA filled in (the artist's
    other LoRAs stay; the preset's own keeps a weight already chosen)."""
    loras = list(settings.loras)
    if all(lora.name != preset.lora for lora in loras):
        loras.append(LoraChoice(preset.lora, preset.lora_weight))
    return replace(
        settings,
        sampler=preset.sampler.value,
        steps=preset.steps,
        guidance_scale=preset.guidance_scale,
        loras=loras,
        speed_preset=preset.name,
    )


def live_settings(
    settings: GenerationSettings, preset: protocol.SpeedPresetInfo | None, width: int, height: int
) -> GenerationSettings:
    """What a live job for a ``width`` x ``height`` area runs with: the docker's style, prompt and
    strength; the live preset, a fixed seed, one image, img2img at the live resolution."""
    base = apply_preset(settings, preset) if preset is not None else settings
    live_width, live_height = live_size(width, height, settings.live_max_side)
    blocks = base.preset
    if blocks == protocol.BlockPreset.PRECISE.value and base.guidance_scale <= 1.0:
        blocks = protocol.BlockPreset.STYLE.value  # precise needs CFG, which this preset turns off
    return replace(
        base,
        preset=blocks,
        kind=JobKind.STYLIZE,
        seed=settings.live_seed,
        seed_locked=True,
        batch=1,
        auto_size=False,
        width=live_width,
        height=live_height,
    )


def live_size(width: int, height: int, max_side: int) -> tuple[int, int]:
    """The canvas size scaled down to at most ``max_side`` a side (multiples of 8, at least 8)."""
    scale = min(1.0, max_side / max(width, height))
    return max(8, int(width * scale) // 8 * 8), max(8, int(height * scale) // 8 * 8)
