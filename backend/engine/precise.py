"""The "precise" preset: the style block as usual, and the reference's layout pushed away.

At the layout block (``down_blocks.2.attentions.1``) the reference is injected into the negative
(unconditional) half of the CFG batch only, at the "layout push" weight, while the positive half gets
no image tokens there. Classifier-free guidance then steers away from the reference's composition
and keeps its style (ComfyUI_IPAdapter_plus calls this "style transfer precise").

Built on diffusers' own ``IPAdapterAttnProcessor2_0``: ``PreciseLayoutProcessor`` wraps the block's
processors for a job and runs each CFG half through the wrapped processor once, the negative half
with the positive half's image tokens at the push weight and the positive half at scale 0 (which
diffusers skips). No compute is added, and nothing of diffusers' attention is copied.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from .blocks import LAYOUT_BLOCK
from .request import RequestError


class PreciseLayoutProcessor(torch.nn.Module):
    """Wraps one IP-Adapter attention processor of the layout block for a precise job."""

    def __init__(self, inner: torch.nn.Module, push: float) -> None:
        super().__init__()
        self.inner = inner
        self.push = push

    def __call__(
        self,
        attn: torch.nn.Module,
        hidden_states: torch.Tensor,
        encoder_hidden_states: tuple[torch.Tensor, list[torch.Tensor]] | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        scale: float = 1.0,
        ip_adapter_masks: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The negative half with the positive half's image tokens at the push weight, the positive
        half with none; each half through the wrapped processor once."""
        if not isinstance(encoder_hidden_states, tuple) or hidden_states.shape[0] % 2:
            raise RequestError("the precise preset needs classifier-free guidance (guidance above 1)")
        text, image_tokens = encoder_hidden_states
        half = hidden_states.shape[0] // 2
        positive_tokens = [tokens[half:] for tokens in image_tokens]

        def run(rows: slice, weight: float) -> torch.Tensor:
            saved = self.inner.scale
            self.inner.scale = [weight] * len(saved)
            try:
                return self.inner(
                    attn,
                    hidden_states[rows],
                    (text[rows], positive_tokens),
                    attention_mask=None if attention_mask is None else attention_mask[rows],
                    temb=None if temb is None else temb[rows],
                    scale=scale,
                    ip_adapter_masks=ip_adapter_masks,
                )
            finally:
                self.inner.scale = saved

        return torch.cat([run(slice(0, half), self.push), run(slice(half, None), 0.0)])


def layout_processor_names(unet: torch.nn.Module, blocks: Sequence[str] = (LAYOUT_BLOCK,)) -> list[str]:
    """The cross-attention processors of the layout blocks (one per transformer layer; SDXL's one
    block unless the family names its own: SD1.5's ``down_blocks.2.attentions.0`` and ``.1``)."""
    prefixes = tuple(f"{block}." for block in blocks)
    return [
        name
        for name in unet.attn_processors
        if name.startswith(prefixes) and name.endswith("attn2.processor")
    ]


class PreciseLayout:
    """Installs the wrappers for a precise job and takes them out for any other (per job, like the
    scheduler), so that ``pipe(**kwargs)`` after ``prepare`` is exactly the job."""

    def __init__(self, unet: torch.nn.Module, blocks: Sequence[str] = (LAYOUT_BLOCK,)) -> None:
        self.unet = unet
        self.names = layout_processor_names(unet, blocks)
        self.installed: float | None = None
        """The push the wrappers are installed at (None: diffusers' own processors), so that jobs
        without the precise preset do not walk the UNet's processors twice each."""

    def set(self, push: float | None) -> None:
        """``push`` None: the block's own processors; else wrapped at that push weight. (Take them out
        before ``set_ip_adapter_scale``, which sets the scales of diffusers' own processors only.)"""
        if push == self.installed:
            return
        self.installed = push
        processors = dict(self.unet.attn_processors)
        changed = False
        for name in self.names:
            current = processors[name]
            inner = current.inner if isinstance(current, PreciseLayoutProcessor) else current
            if push is None:
                wanted = inner
            elif isinstance(current, PreciseLayoutProcessor) and current.push == push:
                wanted = current
            else:
                wanted = PreciseLayoutProcessor(inner, push)
            if wanted is not current:
                processors[name] = wanted
                changed = True
        if changed:
            self.unet.set_attn_processor(processors)
