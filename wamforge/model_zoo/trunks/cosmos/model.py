"""A small Cosmos-Predict2-class video DiT.

Module and parameter names follow diffusers' `CosmosTransformer3DModel` (time_embed.*,
transformer_blocks.N.norm1.linear_1, transformer_blocks.N.attn1.to_q, ff.net.0.proj, norm_out.*,
proj_out, ...) and the constructor takes diffusers' config names, so a diffusers checkpoint loads
with strict=True. Only the Predict2 feature set is built: no Cosmos2.5 text projection, image
context or ControlNet residuals.

With a boolean text mask (or none) the output matches diffusers to fp32 rounding
(tests/test_cosmos_parity.py). Extensions over diffusers: padding_mask may be omitted (the
pipelines always pass zeros) or given per sample, and timesteps may be given per frame as
[B, T] as well as diffusers' [B, 1, T, 1, 1].

Precision follows diffusers: modulation runs in the model dtype; RoPE, the RMSNorm statistics and
the learnable position embedding's normalizer run in fp32.
"""
from __future__ import annotations

import inspect
import math

import torch
import torch.nn.functional as F
from torch import nn

from wamforge.model_zoo.common.attention import attention, padded_keys


def sinusoidal_embedding(timestep: torch.Tensor, dim: int) -> torch.Tensor:
    """[N] -> [N, dim] fp32, cos half first (diffusers' Timesteps with flip_sin_to_cos=True, shift 0)."""
    half = dim // 2
    freqs = torch.exp(-math.log(10000.0) * torch.arange(half, dtype=torch.float32, device=timestep.device) / half)
    angles = timestep.float()[:, None] * freqs
    return torch.cat([angles.cos(), angles.sin()], dim=-1)


class RMSNorm(nn.Module):
    """Statistics in fp32; the product with the weight is taken in the weight's dtype, as in diffusers."""

    def __init__(self, dim: int, eps: float):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        variance = x.float().pow(2).mean(-1, keepdim=True)
        x = x * torch.rsqrt(variance + self.eps)
        if self.weight.dtype in (torch.float16, torch.bfloat16):
            x = x.to(self.weight.dtype)
        return x * self.weight


def per_frame(x: torch.Tensor, frames: int) -> torch.Tensor:
    """[B, L, D] -> [B, frames, L / frames, D]: tokens are frame-major, so each frame is a contiguous run."""
    return x.unflatten(1, (frames, -1))


class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: tuple[int, int, int]):
        super().__init__()
        self.patch_size = patch
        self.proj = nn.Linear(in_channels * math.prod(patch), dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """[B, C, T, H, W] -> [B, T', H', W', dim]; each patch is flattened as (C, p_t, p_h, p_w)."""
        batch, channels, frames, height, width = x.shape
        p_t, p_h, p_w = self.patch_size
        x = x.reshape(batch, channels, frames // p_t, p_t, height // p_h, p_h, width // p_w, p_w)
        return self.proj(x.permute(0, 2, 4, 6, 1, 3, 5, 7).flatten(4, 7))


class TimestepMLP(nn.Module):
    """Sinusoid -> the shared modulation bias `temb` (3 * dim) that every AdaLN adds to its own LoRA."""

    def __init__(self, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(dim, dim, bias=False)
        self.activation = nn.SiLU()
        self.linear_2 = nn.Linear(dim, 3 * dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.activation(self.linear_1(x)))


class TimeEmbedding(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.t_embedder = TimestepMLP(dim)
        self.norm = RMSNorm(dim, eps=1e-6)

    def forward(self, timestep: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
        """timestep [N] -> temb [N, 3 * dim] (shared shift/scale/gate bias), embedded_timestep [N, dim]
        (the normalized sinusoid each AdaLN projects through its low-rank MLP)."""
        features = sinusoidal_embedding(timestep, self.norm.weight.shape[0]).to(dtype)
        return self.t_embedder(features), self.norm(features)


class AdaLNLoRA(nn.Module):
    """LayerNorm modulated by a low-rank projection of the timestep embedding plus the shared `temb`.

    Returns `chunks` tensors of [B, frames, dim]: shift, scale (and gate for blocks).
    """

    def __init__(self, dim: int, lora_dim: int, chunks: int):
        super().__init__()
        self.chunks = chunks
        self.norm = nn.LayerNorm(dim, eps=1e-6, elementwise_affine=False)  # no parameters
        self.activation = nn.SiLU()
        self.linear_1 = nn.Linear(dim, lora_dim, bias=False)
        self.linear_2 = nn.Linear(lora_dim, chunks * dim, bias=False)

    def modulation(self, embedded_timestep: torch.Tensor, temb: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.linear_2(self.linear_1(self.activation(embedded_timestep)))
        # the final layer uses only the shift/scale part of temb
        return (out + temb[..., : out.shape[-1]]).chunk(self.chunks, dim=-1)

    def forward(self, x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
        frames = shift.shape[1]
        h = per_frame(self.norm(x), frames) * (1 + scale[:, :, None]) + shift[:, :, None]
        return h.flatten(1, 2)


class CosmosRotaryPosEmbed(nn.Module):
    """3D RoPE over (time, height, width) bands of the head dim, in the rotate-half layout.

    Each band's base is NTK-scaled by its `rope_scale` entry, which is how Predict2 stretches the
    positions it was trained on to larger grids. With `fps` the temporal positions are in units of
    1/24 s rather than frames, so clips at other frame rates keep their real-time spacing.
    """

    base_fps = 24

    def __init__(self, head_dim: int, rope_scale: tuple[float, float, float]):
        super().__init__()
        hw_band = head_dim // 6 * 2
        self.bands = (head_dim - 2 * hw_band, hw_band, hw_band)
        self.thetas = tuple(10000.0 * scale ** (band / (band - 2)) for scale, band in zip(rope_scale, self.bands))

    def forward(self, frames: int, height: int, width: int, device, fps: float | None = None):
        """cos, sin of shape [frames * height * width, head_dim / 2], fp32."""
        grid = (frames, height, width)
        angles = []
        for axis, (size, band, theta) in enumerate(zip(grid, self.bands, self.thetas)):
            freqs = 1.0 / theta ** (torch.arange(0, band, 2, device=device, dtype=torch.float32) / band)
            positions = torch.arange(size, device=device, dtype=torch.float32)
            if axis == 0 and fps is not None:
                positions = positions / fps * self.base_fps
            shape = [1, 1, 1, band // 2]
            shape[axis] = size
            angles.append(torch.outer(positions, freqs).view(shape).expand(*grid, band // 2))
        angles = torch.cat(angles, dim=-1).flatten(0, 2)
        return angles.cos(), angles.sin()


def apply_rotary(x: torch.Tensor, rotary: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """Rotate (x[i], x[i + d/2]) pairs of x [B, heads, L, d] as complex numbers, in fp32."""
    cos, sin = rotary
    first, second = x.float().chunk(2, dim=-1)
    return torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1).type_as(x)


class CosmosAttention(nn.Module):
    """Self- or cross-attention with per-head q/k RMSNorm; no biases anywhere."""

    def __init__(self, dim: int, heads: int, head_dim: int, context_dim: int | None = None):
        super().__init__()
        self.heads = heads
        context_dim = dim if context_dim is None else context_dim
        self.to_q = nn.Linear(dim, heads * head_dim, bias=False)
        self.to_k = nn.Linear(context_dim, heads * head_dim, bias=False)
        self.to_v = nn.Linear(context_dim, heads * head_dim, bias=False)
        self.norm_q = RMSNorm(head_dim, eps=1e-5)  # diffusers' Attention default eps
        self.norm_k = RMSNorm(head_dim, eps=1e-5)
        self.to_out = nn.ModuleList([nn.Linear(heads * head_dim, dim, bias=False)])  # names read to_out.0.*

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None, rotary=None,
                context_mask: torch.Tensor | None = None) -> torch.Tensor:
        context = x if context is None else context
        q, k, v = (t.unflatten(-1, (self.heads, -1)).transpose(1, 2)
                   for t in (self.to_q(x), self.to_k(context), self.to_v(context)))
        q, k = self.norm_q(q), self.norm_k(k)
        if rotary is not None:
            q, k = apply_rotary(q, rotary), apply_rotary(k, rotary)
        out = attention(q, k.type_as(q), v.type_as(q), key_padding_mask=context_mask)
        return self.to_out[0](out.transpose(1, 2).flatten(2).type_as(q))


class GELUProjection(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.proj = nn.Linear(dim, hidden, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.proj(x))  # exact erf GELU, not the tanh approximation


class FeedForward(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        # slot 1 is diffusers' dropout; kept so the weights are named net.0.proj and net.2
        self.net = nn.Sequential(GELUProjection(dim, hidden), nn.Identity(), nn.Linear(hidden, dim, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class CosmosTransformerBlock(nn.Module):
    """Gated AdaLN-LoRA self-attention (RoPE) -> cross-attention to text -> FFN."""

    def __init__(self, dim: int, heads: int, head_dim: int, text_dim: int, mlp_ratio: float, lora_dim: int):
        super().__init__()
        self.norm1 = AdaLNLoRA(dim, lora_dim, chunks=3)
        self.attn1 = CosmosAttention(dim, heads, head_dim)
        self.norm2 = AdaLNLoRA(dim, lora_dim, chunks=3)
        self.attn2 = CosmosAttention(dim, heads, head_dim, context_dim=text_dim)
        self.norm3 = AdaLNLoRA(dim, lora_dim, chunks=3)
        self.ff = FeedForward(dim, int(dim * mlp_ratio))

    def forward(self, x, context, embedded_timestep, temb, rotary, extra_pos_emb=None, context_mask=None):
        """x [B, L, dim]; embedded_timestep [B, frames, dim], temb [B, frames, 3 * dim] (frames = 1 when
        the whole sample shares one timestep)."""
        if extra_pos_emb is not None:  # Cosmos re-adds the absolute embedding before every block
            x = x + extra_pos_emb
        frames = temb.shape[1]

        def gated(residual, gate):
            return (per_frame(residual, frames) * gate[:, :, None]).flatten(1, 2)

        shift, scale, gate = self.norm1.modulation(embedded_timestep, temb)
        x = x + gated(self.attn1(self.norm1(x, shift, scale), rotary=rotary), gate)
        shift, scale, gate = self.norm2.modulation(embedded_timestep, temb)
        x = x + gated(self.attn2(self.norm2(x, shift, scale), context, context_mask=context_mask), gate)
        shift, scale, gate = self.norm3.modulation(embedded_timestep, temb)
        return x + gated(self.ff(self.norm3(x, shift, scale)), gate)


class LearnablePositionalEmbed(nn.Module):
    """Cosmos1-style absolute embedding: per-axis tables summed, then scaled to unit RMS per token."""

    def __init__(self, dim: int, grid_max: tuple[int, int, int], eps: float = 1e-6):
        super().__init__()
        self.eps = eps
        self.pos_emb_t = nn.Parameter(torch.zeros(grid_max[0], dim))
        self.pos_emb_h = nn.Parameter(torch.zeros(grid_max[1], dim))
        self.pos_emb_w = nn.Parameter(torch.zeros(grid_max[2], dim))

    def forward(self, frames: int, height: int, width: int) -> torch.Tensor:
        """[frames * height * width, dim], fp32."""
        emb = (self.pos_emb_t[:frames, None, None] + self.pos_emb_h[None, :height, None]
               + self.pos_emb_w[None, None, :width]).flatten(0, 2)
        norm = torch.linalg.vector_norm(emb, dim=-1, keepdim=True, dtype=torch.float32)
        return emb / (self.eps + norm / math.sqrt(emb.shape[-1]))


class CosmosDiT(nn.Module):
    def __init__(self, in_channels: int = 16, out_channels: int = 16, num_attention_heads: int = 16,
                 attention_head_dim: int = 128, num_layers: int = 28, mlp_ratio: float = 4.0,
                 text_embed_dim: int = 1024, adaln_lora_dim: int = 256,
                 max_size: tuple[int, int, int] = (128, 240, 240), patch_size: tuple[int, int, int] = (1, 2, 2),
                 rope_scale: tuple[float, float, float] = (1.0, 4.0, 4.0), concat_padding_mask: bool = True,
                 extra_pos_embed_type: str | None = None):
        """Arguments are diffusers' CosmosTransformer3DModel config keys. `in_channels` counts the
        condition-mask channel of Video2World models (17 there); the padding-mask channel is added
        on top when `concat_padding_mask`."""
        super().__init__()
        if extra_pos_embed_type not in (None, "learnable"):
            raise ValueError(f"unknown extra_pos_embed_type {extra_pos_embed_type!r}")
        dim = num_attention_heads * attention_head_dim
        self.patch_size = tuple(patch_size)
        self.out_channels = out_channels
        # Video2World: one input channel more than it predicts, the condition mask
        self.takes_condition_mask = in_channels == out_channels + 1
        self.concat_padding_mask = concat_padding_mask
        self.patch_embed = PatchEmbed(in_channels + int(concat_padding_mask), dim, self.patch_size)
        self.rope = CosmosRotaryPosEmbed(attention_head_dim, rope_scale)
        self.learnable_pos_embed = None
        if extra_pos_embed_type == "learnable":
            grid_max = tuple(size // patch for size, patch in zip(max_size, self.patch_size))
            self.learnable_pos_embed = LearnablePositionalEmbed(dim, grid_max)
        self.time_embed = TimeEmbedding(dim)
        self.transformer_blocks = nn.ModuleList(
            CosmosTransformerBlock(dim, num_attention_heads, attention_head_dim, text_embed_dim, mlp_ratio,
                                   adaln_lora_dim) for _ in range(num_layers))
        self.norm_out = AdaLNLoRA(dim, adaln_lora_dim, chunks=2)
        self.proj_out = nn.Linear(dim, math.prod(self.patch_size) * out_channels, bias=False)

    @classmethod
    def from_diffusers_config(cls, config: dict) -> "CosmosDiT":
        """Build from a diffusers transformer/config.json dict; refuses the Cosmos2.5 features we lack."""
        unsupported = [key for key in ("use_crossattn_projection", "controlnet_block_every_n", "img_context_dim_in")
                       if config.get(key)]
        if unsupported:
            raise ValueError(f"CosmosDiT builds Predict2 trunks only; config enables {unsupported}")
        names = inspect.signature(cls.__init__).parameters
        return cls(**{key: value for key, value in config.items() if key in names and key != "self"})

    def _timestep_per_frame(self, timestep: torch.Tensor, batch: int, frames: int) -> torch.Tensor:
        """[B], [B, T] or diffusers' [B, 1, T, 1, 1] -> [B, 1] or [B, T'] (T' latent frames after patching)."""
        if timestep.ndim == 5:
            if timestep.shape[1] != 1 or timestep.shape[3:] != (1, 1):
                raise ValueError(f"expected timestep [B, 1, T, 1, 1], got {tuple(timestep.shape)}")
            timestep = timestep.flatten(1)
        elif timestep.ndim == 1:
            timestep = timestep[:, None]
        if timestep.ndim != 2 or timestep.shape[0] != batch or timestep.shape[1] not in (1, frames):
            raise ValueError(f"expected timestep [B], [B, {frames}] or [B, 1, {frames}, 1, 1], "
                             f"got {tuple(timestep.shape)}")
        return timestep

    def forward(self, hidden_states: torch.Tensor, timestep: torch.Tensor, encoder_hidden_states: torch.Tensor,
                condition_mask: torch.Tensor | None = None, padding_mask: torch.Tensor | None = None,
                fps: float | None = None, text_mask: torch.Tensor | None = None, tap_layer: int | None = None,
                stop_at_tap: bool = False) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """hidden_states [B, C, T, H, W]; timestep [B], per latent frame [B, T'] or [B, 1, T', 1, 1],
        on Cosmos' scale (the pipelines pass sigma / (sigma + 1)); encoder_hidden_states [B, Lt, text_dim];
        condition_mask [B, 1, T, H, W] for Video2World; padding_mask [1 or B, 1, H', W'] (resized
        nearest to H, W; zeros when omitted); text_mask [B, Lt] bool, True for real tokens.

        Returns (prediction [B, out_channels, T, H, W], hidden states after block `tap_layer`
        [B, L_tokens, dim]). With stop_at_tap the later blocks and the head are skipped and the
        prediction is None.
        """
        if stop_at_tap and tap_layer is None:
            raise ValueError("stop_at_tap needs a tap_layer")
        taps = () if tap_layer is None else (tap_layer,)
        x, tapped = self._run(hidden_states, timestep, encoder_hidden_states, condition_mask, padding_mask, fps,
                              text_mask, taps, stop_at=tap_layer if stop_at_tap else None)
        return x, tapped.get(tap_layer)

    @property
    def dim(self) -> int:
        return self.patch_embed.proj.out_features

    @property
    def num_layers(self) -> int:
        return len(self.transformer_blocks)

    def predict(self, latents: torch.Tensor, frame_t: torch.Tensor, text_emb: torch.Tensor,
                text_mask: torch.Tensor | None = None, taps: tuple[int, ...] = (), stop_at: int | None = None,
                ) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """The trunk as the couplings see it: flow time per latent frame frame_t [B, F] in [0, 1]
        (Cosmos' own scale: the pipelines pass sigma / (sigma + 1), which is the rectified-flow time)
        -> (velocity, or None when stopped at block `stop_at`; {block: hidden states}). A Video2World
        trunk's condition mask is 1 on the frames at flow time 0, the ones given as condition."""
        condition_mask = None
        if self.takes_condition_mask:
            batch, _, frames, height, width = latents.shape
            condition_mask = (frame_t == 0).to(latents.dtype)[:, None, :, None, None].expand(
                batch, 1, frames, height, width)
        return self._run(latents, frame_t, text_emb, condition_mask, text_mask=text_mask, taps=taps, stop_at=stop_at)

    def _run(self, hidden_states, timestep, encoder_hidden_states, condition_mask=None, padding_mask=None,
             fps=None, text_mask=None, taps: tuple[int, ...] = (), stop_at: int | None = None):
        batch, _, frames, height, width = hidden_states.shape
        p_t, p_h, p_w = self.patch_size
        grid = (frames // p_t, height // p_h, width // p_w)

        if condition_mask is not None:
            hidden_states = torch.cat([hidden_states, condition_mask.type_as(hidden_states)], dim=1)
        if self.concat_padding_mask:
            if padding_mask is None:
                padding_mask = hidden_states.new_zeros(1, 1, height, width)
            if padding_mask.shape[-2:] != (height, width):
                padding_mask = F.interpolate(padding_mask, size=(height, width), mode="nearest")  # torchvision NEAREST
            padding_mask = padding_mask[:, :, None].expand(batch, -1, frames, -1, -1)
            hidden_states = torch.cat([hidden_states, padding_mask.type_as(hidden_states)], dim=1)

        rotary = self.rope(*grid, hidden_states.device, fps=fps)
        extra_pos_emb = None
        if self.learnable_pos_embed is not None:
            extra_pos_emb = self.learnable_pos_embed(*grid).to(self.patch_embed.proj.weight.dtype)
        x = self.patch_embed(hidden_states.to(self.patch_embed.proj.weight.dtype)).flatten(1, 3)

        timestep = self._timestep_per_frame(timestep, batch, grid[0])
        temb, embedded_timestep = self.time_embed(timestep.flatten(), x.dtype)
        temb, embedded_timestep = (t.unflatten(0, timestep.shape) for t in (temb, embedded_timestep))

        tapped, text_mask = {}, padded_keys(text_mask)  # once per forward, shared by every block
        for index, block in enumerate(self.transformer_blocks, start=1):
            x = block(x, encoder_hidden_states, embedded_timestep, temb, rotary, extra_pos_emb, text_mask)
            if index in taps:
                tapped[index] = x
            if index == stop_at:
                return None, tapped

        shift, scale = self.norm_out.modulation(embedded_timestep, temb)
        x = self.proj_out(self.norm_out(x, shift, scale))
        # proj_out packs each patch as (p_h, p_w, p_t, C), unlike the (C, p_t, p_h, p_w) of patch_embed
        x = x.reshape(batch, *grid, p_h, p_w, p_t, self.out_channels)
        x = x.permute(0, 7, 1, 6, 2, 4, 3, 5).reshape(batch, self.out_channels, frames, height, width)
        return x, tapped
