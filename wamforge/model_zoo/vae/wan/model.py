"""The Wan2.1 video VAE: a causal 3D convolutional autoencoder with strides (4, 8, 8) and 16 latents.

Numerically the same network as diffusers' `AutoencoderKLWan` (Wan2.1 flavour: no residual
down/up blocks, no patchify), with the same parameter names, so a diffusers state dict loads with
`strict=True`. See `vae/wan/weights.py` for the official `Wan2.1_VAE` checkpoint layout.

Causality and the streaming cache. Every time convolution only looks backwards: it is padded with
zeros on the left, never on the right. Video is therefore processed as a stream: the encoder sees
frame 0 alone and then chunks of 4 frames, the decoder sees one latent frame at a time. Each causal
conv keeps the last frames of its input in a `StreamCache` (a dict keyed by the module), and
prepends them to the next chunk, so the result equals running over the whole clip while memory stays
bounded by a chunk. Two layers treat the first frame specially, which is what makes 1 + 4k frames
map to 1 + k latents:
  * temporal downsampling passes the first frame through and then halves the rest with a stride-2
    conv whose window starts at the previous chunk's last frame;
  * temporal upsampling passes the first frame through and doubles every later one (the conv makes
    2x channels that are interleaved into 2x frames), starting from zero history after frame 0.

Latent normalization: `encode`/`decode` work with *normalized* latents, (mu - mean) / std with Wan's
published per-channel statistics, which is what the Wan DiT is trained on; `encode_posterior` /
`decode_latents` are the raw diffusers-equivalent entry points, and `normalize` / `denormalize`
convert between the two.

Not included (inference parity is the goal): dropout, attention at `attn_scales`, tiling and
slicing, and the Wan2.2 variant (residual down/up blocks, patchified input).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Wan2.1's published per-channel statistics of the 16 latent channels (diffusers' defaults)
WAN21_LATENTS_MEAN = (-0.7571, -0.7089, -0.9113, 0.1075, -0.1745, 0.9653, -0.1517, 1.5508,
                      0.4134, -0.0715, 0.5517, -0.3632, -0.1922, -0.9497, 0.2503, -0.2921)
WAN21_LATENTS_STD = (2.8184, 1.4541, 2.3275, 2.6558, 1.2196, 1.7708, 2.6052, 2.0743,
                     3.2687, 2.1526, 2.8652, 1.5579, 1.6382, 1.1253, 2.8251, 1.9160)

StreamCache = dict  # {module: state carried from the previous chunk}; a fresh dict starts a new clip


class CausalConv3d(nn.Conv3d):
    """A Conv3d padded only towards the past in time ("same" padding in space).

    With a `cache`, the last `2 * padding_t` input frames are kept and used instead of zeros as the
    left padding of the next chunk, so chunked calls equal one call over the concatenated frames.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0):
        super().__init__(in_channels, out_channels, kernel_size, stride=stride, padding=padding)
        pad_t, pad_h, pad_w = self.padding
        self.history = 2 * pad_t  # frames of the past a window reaches back
        self.space_padding = (pad_w, pad_w, pad_h, pad_h)
        self.padding = (0, 0, 0)  # padding is done by hand in forward

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        missing = self.history  # frames of zero padding still needed on the left
        if cache is not None and self.history:
            past = cache.get(self)
            # clone so the cache does not keep the whole chunk alive through a view; taking the new
            # state from `x` before the cat (as Wan does) keeps tensor layouts, hence bits, identical
            state = x[:, :, -self.history:].clone()
            if past is not None:
                if state.shape[2] < self.history:
                    state = torch.cat([past[:, :, state.shape[2] - self.history:], state], dim=2)
                x = torch.cat([past, x], dim=2)
                missing -= past.shape[2]
            cache[self] = state
        x = F.pad(x, (*self.space_padding, missing, 0))
        return super().forward(x)


class RMSNorm(nn.Module):
    """Channel-wise RMS norm: unit L2 norm over channels, times sqrt(C) and a learned gain `gamma`."""

    def __init__(self, dim: int, spatial_dims: int = 3):
        super().__init__()
        self.scale = dim ** 0.5
        self.gamma = nn.Parameter(torch.ones(dim, *(1,) * spatial_dims))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # bf16/fp16 would lose precision in the sum of squares
        normalized = F.normalize(x.float() if x.dtype in (torch.float16, torch.bfloat16) else x, dim=1)
        return normalized.to(x.dtype) * self.scale * self.gamma


class ResidualBlock(nn.Module):
    """(RMSNorm, SiLU, causal 3x3x3 conv) twice, plus a 1x1x1 conv shortcut when channels change."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.norm1 = RMSNorm(in_dim)
        self.conv1 = CausalConv3d(in_dim, out_dim, 3, padding=1)
        self.norm2 = RMSNorm(out_dim)
        self.conv2 = CausalConv3d(out_dim, out_dim, 3, padding=1)
        self.conv_shortcut = CausalConv3d(in_dim, out_dim, 1) if in_dim != out_dim else nn.Identity()

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)), cache)
        h = self.conv2(F.silu(self.norm2(h)), cache)
        return h + self.conv_shortcut(x)


class AttentionBlock(nn.Module):
    """Single-head self-attention over the pixels of each frame separately (so it stays causal)."""

    def __init__(self, dim: int):
        super().__init__()
        self.norm = RMSNorm(dim, spatial_dims=2)
        self.to_qkv = nn.Conv2d(dim, dim * 3, 1)
        self.proj = nn.Conv2d(dim, dim, 1)

    def forward(self, x: torch.Tensor, cache: StreamCache | None = None) -> torch.Tensor:
        b, c, t, h, w = x.shape
        frames = x.transpose(1, 2).reshape(b * t, c, h, w)
        # [bt, 1 head, hw, 3c]; made contiguous as in diffusers, which picks the same SDPA kernel
        qkv = self.to_qkv(self.norm(frames)).flatten(2).transpose(1, 2).unsqueeze(1).contiguous()
        q, k, v = qkv.chunk(3, dim=-1)
        out = F.scaled_dot_product_attention(q, k, v).squeeze(1).transpose(1, 2).reshape(b * t, c, h, w)
        out = self.proj(out).view(b, t, c, h, w).transpose(1, 2)
        return out + x  # this operand order gives the result the same memory layout as diffusers


class MidBlock(nn.Module):
    """Residual, attention, residual, at the lowest resolution."""

    def __init__(self, dim: int):
        super().__init__()
        self.resnets = nn.ModuleList([ResidualBlock(dim, dim), ResidualBlock(dim, dim)])
        self.attentions = nn.ModuleList([AttentionBlock(dim)])

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.resnets[0](x, cache)
        return self.resnets[1](self.attentions[0](x), cache)


def _per_frame(layer: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Apply a 2D layer to every frame of [B, C, T, H, W]."""
    b, t = x.shape[0], x.shape[2]
    y = layer(x.transpose(1, 2).flatten(0, 1))
    return y.unflatten(0, (b, t)).transpose(1, 2)


class Downsample(nn.Module):
    """Halve H and W (stride-2 conv, padded right/bottom), and with `temporal` also T after frame 0."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(dim, dim, 3, stride=2))
        self.temporal = temporal
        if temporal:
            self.time_conv = CausalConv3d(dim, dim, (3, 1, 1), stride=(2, 1, 1))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = _per_frame(self.resample, x)
        if not self.temporal:
            return x
        if self not in cache:  # the first chunk (frame 0) passes through unchanged
            cache[self] = x[:, :, -1:].clone()
            return x
        # windows [f0 f1 f2], [f2 f3 f4], ...: each chunk starts from the previous chunk's last frame
        previous, cache[self] = cache[self], x[:, :, -1:].clone()
        return self.time_conv(torch.cat([previous, x], dim=2))


class Upsample(nn.Module):
    """Double H and W (nearest + conv, halving channels), and with `temporal` also T after frame 0."""

    def __init__(self, dim: int, temporal: bool):
        super().__init__()
        self.resample = nn.Sequential(nn.Upsample(scale_factor=(2.0, 2.0), mode="nearest-exact"),
                                      nn.Conv2d(dim, dim // 2, 3, padding=1))
        self.temporal = temporal
        if temporal:
            self.time_conv = CausalConv3d(dim, dim * 2, (3, 1, 1), padding=(1, 0, 0))

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        if self.temporal:
            if self not in cache:  # the first chunk (frame 0) is not doubled
                cache[self] = True
            else:
                # the conv's own history starts empty (zeros) at frame 1; its 2C outputs are the
                # even and odd new frames, interleaved in time
                b, c, t, h, w = x.shape
                x = self.time_conv(x, cache).view(b, 2, c, t, h, w)
                x = x.permute(0, 2, 3, 1, 4, 5).reshape(b, c, 2 * t, h, w)
        return _per_frame(self.resample, x)


class UpBlock(nn.Module):
    """`num_res_blocks + 1` residual blocks, then an optional upsampler (kept in a list for naming)."""

    def __init__(self, in_dim: int, out_dim: int, num_res_blocks: int, upsample: str | None):
        super().__init__()
        dims = [in_dim] + [out_dim] * (num_res_blocks + 1)
        self.resnets = nn.ModuleList(ResidualBlock(i, o) for i, o in zip(dims[:-1], dims[1:]))
        self.upsamplers = None
        if upsample is not None:
            self.upsamplers = nn.ModuleList([Upsample(out_dim, temporal=upsample == "3d")])

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        for resnet in self.resnets:
            x = resnet(x, cache)
        return x if self.upsamplers is None else self.upsamplers[0](x, cache)


class Encoder(nn.Module):
    def __init__(self, in_channels: int, dim: int, out_channels: int, dim_mult, num_res_blocks: int,
                 temperal_downsample):
        super().__init__()
        dims = [dim * m for m in [1, *dim_mult]]
        self.conv_in = CausalConv3d(in_channels, dims[0], 3, padding=1)
        layers = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            for _ in range(num_res_blocks):
                layers.append(ResidualBlock(in_dim, out_dim))
                in_dim = out_dim
            if level < len(dim_mult) - 1:  # every level but the last halves the resolution
                layers.append(Downsample(out_dim, temporal=temperal_downsample[level]))
        self.down_blocks = nn.ModuleList(layers)
        self.mid_block = MidBlock(dims[-1])
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.conv_in(x, cache)
        for layer in self.down_blocks:
            x = layer(x, cache)
        x = self.mid_block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class Decoder(nn.Module):
    def __init__(self, dim: int, z_dim: int, out_channels: int, dim_mult, num_res_blocks: int,
                 temperal_upsample):
        super().__init__()
        dims = [dim * m for m in [dim_mult[-1], *dim_mult[::-1]]]
        self.conv_in = CausalConv3d(z_dim, dims[0], 3, padding=1)
        self.mid_block = MidBlock(dims[0])
        blocks = []
        for level, (in_dim, out_dim) in enumerate(zip(dims[:-1], dims[1:])):
            if level > 0:
                in_dim //= 2  # the previous level's upsampler halved the channels
            upsample = None
            if level < len(dim_mult) - 1:
                upsample = "3d" if temperal_upsample[level] else "2d"
            blocks.append(UpBlock(in_dim, out_dim, num_res_blocks, upsample))
        self.up_blocks = nn.ModuleList(blocks)
        self.norm_out = RMSNorm(dims[-1])
        self.conv_out = CausalConv3d(dims[-1], out_channels, 3, padding=1)

    def forward(self, x: torch.Tensor, cache: StreamCache) -> torch.Tensor:
        x = self.mid_block(self.conv_in(x, cache), cache)
        for block in self.up_blocks:
            x = block(x, cache)
        return self.conv_out(F.silu(self.norm_out(x)), cache)


class WanVAE(nn.Module):
    """Wan2.1's causal video VAE, with the interface of `PatchifyVAE`.

    `encode(video [B, T, 3, H, W] in [-1, 1]) -> normalized latents [B, z_dim, 1 + (T-1)/4, H/8, W/8]`
    and `decode(normalized latents) -> video [B, T, 3, H, W]` clamped to [-1, 1]. Defaults are the
    released Wan2.1 VAE (base_dim 96, dim_mult [1, 2, 4, 4], 2 residual blocks, z_dim 16).
    """

    def __init__(self, base_dim: int = 96, z_dim: int = 16, dim_mult=(1, 2, 4, 4), num_res_blocks: int = 2,
                 temperal_downsample=(False, True, True), latents_mean=None, latents_std=None,
                 in_channels: int = 3, out_channels: int = 3):
        super().__init__()
        if len(temperal_downsample) != len(dim_mult) - 1:
            raise ValueError("temperal_downsample needs one flag per downsampling level (len(dim_mult) - 1)")
        self.z_dim = self.latent_channels = z_dim
        self.spatial_stride = 2 ** (len(dim_mult) - 1)
        self.temporal_stride = 2 ** sum(map(bool, temperal_downsample))
        # diffusers' encode loop hard-codes chunks of 4 frames; other strides would not stream right
        if self.temporal_stride not in (1, 2, 4):
            raise ValueError("the temporal stride must divide the 4-frame encoder chunk")
        self.encoder = Encoder(in_channels, base_dim, 2 * z_dim, dim_mult, num_res_blocks, temperal_downsample)
        self.quant_conv = CausalConv3d(2 * z_dim, 2 * z_dim, 1)
        self.post_quant_conv = CausalConv3d(z_dim, z_dim, 1)
        self.decoder = Decoder(base_dim, z_dim, out_channels, dim_mult, num_res_blocks,
                               list(temperal_downsample)[::-1])
        if latents_mean is None and latents_std is None and z_dim == len(WAN21_LATENTS_MEAN):
            latents_mean, latents_std = WAN21_LATENTS_MEAN, WAN21_LATENTS_STD
        mean = torch.tensor(latents_mean if latents_mean is not None else [0.0] * z_dim)
        std = torch.tensor(latents_std if latents_std is not None else [1.0] * z_dim)
        if mean.shape != (z_dim,) or std.shape != (z_dim,):
            raise ValueError(f"latents_mean/std need {z_dim} values")
        # not in the state dict, so diffusers' state dicts load strictly
        self.register_buffer("latents_mean", mean.view(1, z_dim, 1, 1, 1), persistent=False)
        self.register_buffer("latents_std", std.view(1, z_dim, 1, 1, 1), persistent=False)

    def latent_frames(self, frames: int) -> int:
        if (frames - 1) % 4:
            raise ValueError(f"the VAE needs 1 + 4k frames, got {frames}")
        return 1 + (frames - 1) // self.temporal_stride

    # --- raw, diffusers-equivalent entry points: channels-first video [B, C, T, H, W] ---

    def encode_posterior(self, video: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """[B, 3, T, H, W] -> (mean, logvar) of the diagonal Gaussian posterior, unnormalized."""
        self.latent_frames(video.shape[2])
        cache: StreamCache = {}
        # frame 0 alone, then chunks of 4: the same chunking as Wan, so the same numbers
        # (a lone frame has no later chunks: split would hand back one empty one)
        chunks = [video[:, :, :1], *(video[:, :, 1:].split(4, dim=2) if video.shape[2] > 1 else ())]
        moments = self.quant_conv(torch.cat([self.encoder(chunk, cache) for chunk in chunks], dim=2))
        mean, logvar = moments.chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def decode_latents(self, latents: torch.Tensor) -> torch.Tensor:
        """Unnormalized latents [B, z, F, h, w] -> video [B, 3, T, H, W] clamped to [-1, 1]."""
        x = self.post_quant_conv(latents)
        cache: StreamCache = {}
        frames = [self.decoder(x[:, :, i:i + 1], cache) for i in range(x.shape[2])]
        return torch.cat(frames, dim=2).clamp(-1.0, 1.0)

    def normalize(self, latents: torch.Tensor) -> torch.Tensor:
        return (latents - self.latents_mean.to(latents)) / self.latents_std.to(latents)

    def denormalize(self, latents: torch.Tensor) -> torch.Tensor:
        return latents * self.latents_std.to(latents) + self.latents_mean.to(latents)

    # --- the PatchifyVAE interface: frames-first video, normalized latents ---

    def encode(self, video: torch.Tensor, sample: bool = False,
               generator: torch.Generator | None = None) -> torch.Tensor:
        """[B, T, 3, H, W] in [-1, 1] -> normalized latents [B, z, 1 + (T-1)/4, H/8, W/8].

        The posterior mean by default; `sample=True` draws mean + std * noise instead.
        """
        mean, logvar = self.encode_posterior(video.transpose(1, 2))
        if sample:
            noise = torch.randn(mean.shape, generator=generator, device=mean.device, dtype=mean.dtype)
            mean = mean + torch.exp(0.5 * logvar) * noise
        return self.normalize(mean)

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Normalized latents [B, z, F, h, w] -> video [B, 1 + stride_t (F-1), 3, H, W] in [-1, 1]."""
        return self.decode_latents(self.denormalize(latents)).transpose(1, 2)
