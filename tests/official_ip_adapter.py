"""The official IP-Adapter pieces the peer checks (``test_official_plus.py``, ``test_official_sd15.py``)
re-implement from the InstantStyle code's published description rather than through diffusers'
IP-Adapter classes: the plus adapters' Resampler and the attention processor that adds the image
tokens' attention in the target blocks only (``IPAttnProcessor2_0`` with ``skip``)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


class Resampler(torch.nn.Module):
    """The Perceiver resampler, from the file's own tensors (``image_proj.*``)."""

    def __init__(self, state: dict[str, torch.Tensor], head_dim: int = 64) -> None:
        super().__init__()
        self.state, self.head_dim = state, head_dim
        self.depth = len({key.split(".")[1] for key in state if key.startswith("layers.")})

    def linear(self, x: torch.Tensor, name: str) -> torch.Tensor:
        return F.linear(x, self.state[f"{name}.weight"], self.state.get(f"{name}.bias"))

    def norm(self, x: torch.Tensor, name: str) -> torch.Tensor:
        weight = self.state[f"{name}.weight"]
        return F.layer_norm(x, weight.shape, weight, self.state[f"{name}.bias"])

    def attend(self, x: torch.Tensor, latents: torch.Tensor, layer: str) -> torch.Tensor:
        x, latents = self.norm(x, f"{layer}.norm1"), self.norm(latents, f"{layer}.norm2")
        queries = self.linear(latents, f"{layer}.to_q")
        keys, values = self.linear(torch.cat([x, latents], dim=-2), f"{layer}.to_kv").chunk(2, dim=-1)
        heads = queries.shape[-1] // self.head_dim

        def split(t: torch.Tensor) -> torch.Tensor:
            return t.reshape(t.shape[0], t.shape[1], heads, self.head_dim).transpose(1, 2)

        scale = 1 / math.sqrt(math.sqrt(self.head_dim))  # on both sides, as the original does
        weight = (split(queries) * scale) @ (split(keys) * scale).transpose(-2, -1)
        out = torch.softmax(weight.float(), dim=-1).type(weight.dtype) @ split(values)
        out = out.transpose(1, 2).reshape(latents.shape[0], latents.shape[1], -1)
        return self.linear(out, f"{layer}.to_out")

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        latents = self.state["latents"].repeat(features.shape[0], 1, 1)
        x = self.linear(features, "proj_in")
        for index in range(self.depth):
            layer = f"layers.{index}"
            latents = self.attend(x, latents, f"{layer}.0") + latents
            ff = self.norm(latents, f"{layer}.1.0")
            ff = self.linear(F.gelu(self.linear(ff, f"{layer}.1.1")), f"{layer}.1.3")
            latents = ff + latents
        return self.norm(self.linear(latents, "proj_out"), "norm_out")


class ImageTokenAttention(torch.nn.Module):
    """A cross-attention over the prompt's tokens plus, unless skipped, the image tokens at ``scale``."""

    def __init__(self, to_k_ip: torch.Tensor, to_v_ip: torch.Tensor, scale: float, tokens: int, skip: bool):
        super().__init__()
        self.to_k_ip, self.to_v_ip, self.scale, self.tokens, self.skip = to_k_ip, to_v_ip, scale, tokens, skip

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **_):
        batch = hidden_states.shape[0]
        text, image = encoder_hidden_states[:, : -self.tokens], encoder_hidden_states[:, -self.tokens :]

        def heads(t: torch.Tensor) -> torch.Tensor:
            return t.view(batch, -1, attn.heads, t.shape[-1] // attn.heads).transpose(1, 2)

        def attend(keys: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
            out = F.scaled_dot_product_attention(heads(attn.to_q(hidden_states)), heads(keys), heads(values))
            return out.transpose(1, 2).reshape(batch, -1, out.shape[1] * out.shape[-1])

        out = attend(attn.to_k(text), attn.to_v(text))
        if not self.skip:
            out = out + self.scale * attend(F.linear(image, self.to_k_ip), F.linear(image, self.to_v_ip))
        return attn.to_out[1](attn.to_out[0](out))
