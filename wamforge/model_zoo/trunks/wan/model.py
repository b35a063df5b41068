"""A small Wan2.1/2.2-class video DiT.

Module and parameter names follow diffusers' `WanTransformer3DModel` (condition_embedder.*,
blocks.N.attn1.to_q, blocks.N.ffn.net.0.proj, scale_shift_table, proj_out, ...) so official
weights can be mapped onto it one to one. Timesteps use Wan's scale, [0, 1000], and may be given
per token ([B, L], as in Wan2.2 TI2V) or per sample ([B]).

With text_mask=None the output matches diffusers to fp32 rounding (tests/test_wan_parity.py).
Deliberate deviations: a text_mask keeps padded text tokens out of cross-attention (Wan and
diffusers attend to the padding), and qk_norm=False drops the q/k norms (diffusers always has them).

Image conditioning (Wan2.1 I2V / FLF2V): with image_dim set, CLIP image tokens go through
`condition_embedder.image_embedder` (LayerNorm -> GELU MLP -> LayerNorm; FLF2V adds a learned
`pos_embed` over the first- and last-frame tokens) and every cross-attention attends to them with its
own keys and values (`attn2.add_k_proj`, `attn2.add_v_proj`, `attn2.norm_added_k`), the result added
to the text attention before `to_out`, as in Wan and diffusers. Image tokens are given separately
(`image_emb`), so the text need not be padded to 512 tokens, as diffusers' split requires.

Modulation, norms and the time embedding run in fp32 even when the rest of the model runs in
bf16, as in Wan: the weights are upcast on the fly, so this holds under autocast and under a
model cast wholesale to bf16 (e.g. by DeepSpeed).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from wamforge.model_zoo.common.attention import as_block_mask, masked_backend, padded_keys
from wamforge.model_zoo.common.layers import (FREQ_DIM, FP32LayerNorm, FP32Linear, FeedForward, TimestepEmbedding,
                                             TransformerBlock)
from wamforge.model_zoo.common.partitions import whole

NUM_TRAIN_TIMESTEPS = 1000  # Wan takes flow time t in [0, 1] as t * 1000


class TextProjection(nn.Module):
    def __init__(self, in_dim: int, dim: int):
        super().__init__()
        self.linear_1 = nn.Linear(in_dim, dim)
        self.act_1 = nn.GELU(approximate="tanh")
        self.linear_2 = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear_2(self.act_1(self.linear_1(x)))


class WanTimeTextEmbedding(nn.Module):
    def __init__(self, dim: int, text_dim: int):
        super().__init__()
        self.time_embedder = TimestepEmbedding(FREQ_DIM, dim)
        self.act_fn = nn.SiLU()
        self.time_proj = FP32Linear(dim, 6 * dim)
        self.text_embedder = TextProjection(text_dim, dim)

    def forward(self, timestep: torch.Tensor, text_emb: torch.Tensor):
        """timestep [B, L] -> temb [B, L, dim], timestep_proj [B, L, 6, dim] (fp32); text -> [B, Lt, dim]."""
        temb = self.time_embedder(timestep)
        timestep_proj = self.time_proj(self.act_fn(temb)).unflatten(-1, (6, -1))
        return temb, timestep_proj, self.text_embedder(text_emb)


class WanRotaryPosEmbed(nn.Module):
    """Wan's 3D RoPE: the head dim is split into time / height / width bands, each rotating
    adjacent channel pairs as complex numbers by position * frequency."""

    def __init__(self, head_dim: int, theta: float = 10000.0):
        super().__init__()
        hw_band = 2 * (head_dim // 6)
        self.bands = (head_dim - 2 * hw_band, hw_band, hw_band)
        self.theta = theta
        self._tables: dict = {}  # a grid's angles depend on nothing else: made once, not every call

    def forward(self, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        """cos, sin of shape [frames * height * width, head_dim / 2], fp32."""
        key = (frames, height, width, str(device))
        if key not in self._tables:
            self._tables[key] = self._angles(frames, height, width, device)
        return self._tables[key]

    def _angles(self, frames: int, height: int, width: int, device) -> tuple[torch.Tensor, torch.Tensor]:
        grid = (frames, height, width)
        angles = []
        for axis, (size, band) in enumerate(zip(grid, self.bands)):
            freqs = self.theta ** (-torch.arange(0, band, 2, device=device, dtype=torch.float64) / band)
            axis_angles = torch.arange(size, device=device, dtype=torch.float64)[:, None] * freqs
            shape = [1, 1, 1, band // 2]
            shape[axis] = size
            angles.append(axis_angles.view(shape).expand(*grid, band // 2))
        angles = torch.cat(angles, dim=-1).flatten(0, 2)
        return angles.cos().float(), angles.sin().float()  # cos/sin in fp64 as in Wan and diffusers


class WanImageEmbedding(nn.Module):
    """CLIP image tokens [B, L_img, image_dim] -> [B, L_img, dim]: LayerNorm, GELU MLP, LayerNorm
    (Wan's MLPProj, img_emb.proj.*). With pos_embed_seq_len (FLF2V) a learned position embedding is
    added first; L_img must then equal it (first- and last-frame tokens concatenated, 2 x 257)."""

    def __init__(self, image_dim: int, dim: int, pos_embed_seq_len: int | None = None):
        super().__init__()
        self.norm1 = FP32LayerNorm(image_dim)  # eps 1e-5, affine: torch's default, as in Wan
        self.ff = FeedForward(image_dim, image_dim, out_dim=dim, approximate="none")
        self.norm2 = FP32LayerNorm(dim)
        self.pos_embed = None
        if pos_embed_seq_len is not None:
            self.pos_embed = nn.Parameter(torch.zeros(1, pos_embed_seq_len, image_dim))

    def forward(self, image_emb: torch.Tensor) -> torch.Tensor:
        dtype = self.ff.net[0].proj.weight.dtype
        if self.pos_embed is not None:
            if image_emb.shape[1] != self.pos_embed.shape[1]:
                raise ValueError(f"image_emb has {image_emb.shape[1]} tokens; this FLF2V model takes "
                                 f"{self.pos_embed.shape[1]} (first- and last-frame tokens concatenated)")
            image_emb = image_emb + self.pos_embed
        return self.norm2(self.ff(self.norm1(image_emb).to(dtype))).to(dtype)


class WanDiT(nn.Module):
    def __init__(self, in_channels: int, dim: int, layers: int, heads: int, ffn_dim: int,
                 text_dim: int, patch: tuple[int, int, int] = (1, 2, 2), qk_norm: bool = True,
                 eps: float = 1e-6, out_channels: int | None = None, image_dim: int | None = None,
                 pos_embed_seq_len: int | None = None):
        """out_channels defaults to in_channels (Wan2.1 I2V takes 36 = 16 noisy + 4 mask + 16 image
        latent channels and predicts 16). image_dim (1280 for CLIP ViT-H) adds image cross-attention;
        pos_embed_seq_len (514) adds FLF2V's image position embedding."""
        super().__init__()
        if pos_embed_seq_len is not None and image_dim is None:
            raise ValueError("pos_embed_seq_len needs image_dim")
        self.patch_size = tuple(patch)
        self.out_channels = in_channels if out_channels is None else out_channels
        self.rope = WanRotaryPosEmbed(dim // heads)
        self.patch_embedding = nn.Conv3d(in_channels, dim, kernel_size=patch, stride=patch)
        self.condition_embedder = WanTimeTextEmbedding(dim, text_dim)
        if image_dim is not None:  # diffusers' condition_embedder.image_embedder
            self.condition_embedder.image_embedder = WanImageEmbedding(image_dim, dim, pos_embed_seq_len)
        self.blocks = nn.ModuleList(TransformerBlock(dim, ffn_dim, heads, qk_norm, eps, image_kv=image_dim is not None)
                                    for _ in range(layers))
        self.norm_out = FP32LayerNorm(dim, eps, elementwise_affine=False)
        self.proj_out = nn.Linear(dim, self.out_channels * math.prod(patch))
        self.scale_shift_table = nn.Parameter(torch.randn(1, 2, dim) / dim**0.5)
        self.gradient_checkpointing = False  # recompute each block in backward: activations of one block
        self.sequence_shard = None
        self._init_weights()

    def shard_sequence(self, shard) -> None:
        """Ulysses sequence parallelism (training/parallel/sequence_parallel.py): this rank runs its slice
        of every sample's tokens; the tap and the prediction come back whole."""
        self.sequence_shard = shard
        for block in self.blocks:
            block.attn1.sequence_shard = shard

    def _init_weights(self):
        # Wan's recipe: xavier linears, small embedders, zero output so training starts at v = 0
        for module in self.modules():
            if isinstance(module, nn.Linear):
                with whole(module.parameters(recurse=False)):
                    nn.init.xavier_uniform_(module.weight)
                    nn.init.zeros_(module.bias)
        with whole([self.patch_embedding.weight]):
            nn.init.xavier_uniform_(self.patch_embedding.weight.view(self.patch_embedding.out_channels, -1))
        for name, module in self.condition_embedder.named_modules():
            if isinstance(module, nn.Linear) and not name.startswith("image_embedder"):  # Wan: xavier there
                with whole([module.weight]):
                    nn.init.normal_(module.weight, std=0.02)
        with whole([self.proj_out.weight]):
            nn.init.zeros_(self.proj_out.weight)

    # --- trunk services: the pieces `forward` is made of, for models that add token streams ---

    @property
    def dim(self) -> int:
        return self.patch_embedding.out_channels

    @property
    def num_layers(self) -> int:
        return len(self.blocks)

    def grid(self, latents: torch.Tensor) -> tuple[int, int, int]:
        """(frames, height, width) of the token grid the latents [B, C, F, H, W] patch into."""
        p_t, p_h, p_w = self.patch_size
        frames, height, width = latents.shape[2:]
        return frames // p_t, height // p_h, width // p_w

    def embed(self, latents: torch.Tensor) -> torch.Tensor:
        """latents [B, C, F, H, W] -> video tokens [B, F' H' W', dim]."""
        x = self.patch_embedding(latents.to(self.patch_embedding.weight.dtype)).flatten(2).transpose(1, 2)
        return x.contiguous()  # the transposed view would make every block's matmuls copy or stride

    def condition(self, timestep: torch.Tensor, text_emb: torch.Tensor):
        """timestep [B] or [B, L] on Wan's [0, 1000] scale -> (temb, timestep_proj, text context)."""
        if timestep.ndim == 1:
            timestep = timestep[:, None]  # one timestep broadcast over all tokens
        return self.condition_embedder(timestep, text_emb)

    def run_blocks(self, x: torch.Tensor, context: torch.Tensor, timestep_proj: torch.Tensor, rotary,
                   text_mask: torch.Tensor | None = None, self_attn_mask: torch.Tensor | None = None,
                   image_context: torch.Tensor | None = None, taps: tuple[int, ...] = (),
                   stop_at: int | None = None) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """Tokens through the blocks; returns (output tokens, or None when stopped early at block
        `stop_at`; {block index (1-based): hidden states after it} for the blocks in `taps`)."""
        shard = self.sequence_shard
        if self_attn_mask is not None and shard is None and masked_backend(x.device) == "flex":
            self_attn_mask = as_block_mask(self_attn_mask)  # once per forward, shared by every block
        text_mask = padded_keys(text_mask)  # likewise
        if shard is not None:
            x = shard.split(x)
            rotary = tuple(shard.split(r, dim=0) for r in rotary)
            if timestep_proj.shape[1] > 1:  # per-token timesteps
                timestep_proj = shard.split(timestep_proj)
        tapped = {}
        for index, block in enumerate(self.blocks, start=1):
            if self.gradient_checkpointing and torch.is_grad_enabled():
                x = checkpoint(block, x, context, timestep_proj, rotary, text_mask, self_attn_mask,
                               image_context, use_reentrant=False)
            else:
                x = block(x, context, timestep_proj, rotary, text_mask, self_attn_mask, image_context)
            if index in taps:
                tapped[index] = x if shard is None else shard.gather(x)
            if index == stop_at:
                return None, tapped
        return (x if shard is None else shard.gather(x)), tapped

    def head(self, x: torch.Tensor, temb: torch.Tensor, grid: tuple[int, int, int]) -> torch.Tensor:
        """Video tokens [B, L, dim] (temb [B, L or 1, dim]) -> velocity [B, C, F, H, W]."""
        batch = x.shape[0]
        p_t, p_h, p_w = self.patch_size
        shift, scale = (self.scale_shift_table.float() + temb[:, :, None]).unbind(dim=2)
        x = self.proj_out((self.norm_out(x) * (1 + scale) + shift).type_as(x))
        x = x.reshape(batch, *grid, p_t, p_h, p_w, self.out_channels)
        x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)
        return x.reshape(batch, self.out_channels, grid[0] * p_t, grid[1] * p_h, grid[2] * p_w)

    def predict(self, latents: torch.Tensor, frame_t: torch.Tensor, text_emb: torch.Tensor,
                text_mask: torch.Tensor | None = None, taps: tuple[int, ...] = (), stop_at: int | None = None,
                self_attn_mask: torch.Tensor | None = None) -> tuple[torch.Tensor | None, dict[int, torch.Tensor]]:
        """The trunk as the couplings see it: flow time per latent frame frame_t [B, F] in [0, 1]
        (0 clean, 1 noise) -> (velocity, or None when stopped at block `stop_at`; tapped states).
        self_attn_mask (bool [L, L], True = may attend): e.g. block-causal by frame, as a KVCache serves."""
        grid = self.grid(latents)
        # per token, as Wan2.2 TI2V: embedding per frame and repeating would give the same forward but
        # sum the weight gradients in another order, and training would drift from earlier runs by rounding
        timestep = frame_t.repeat_interleave(grid[1] * grid[2], dim=1) * NUM_TRAIN_TIMESTEPS
        x, out = self.embed(latents), None
        temb, timestep_proj, context = self.condition(timestep, text_emb)
        x, tapped = self.run_blocks(x, context, timestep_proj, self.rope(*grid, latents.device), text_mask,
                                    self_attn_mask, taps=taps, stop_at=stop_at)
        if x is not None:
            out = self.head(x, temb, grid)
        return out, tapped

    def forward(self, latents: torch.Tensor, timestep: torch.Tensor, text_emb: torch.Tensor,
                text_mask: torch.Tensor | None = None, tap_layer: int | None = None,
                stop_at_tap: bool = False, self_attn_mask: torch.Tensor | None = None,
                image_emb: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """latents [B, C, F, H, W]; timestep [B] or [B, L_tokens] in [0, 1000].

        image_emb [B, L_img, image_dim] (CLIP tokens, 257 per frame; FLF2V: first and last frame
        concatenated) is attended by every cross-attention next to the text; it needs a model built
        with image_dim. Left out, an I2V model attends to the text only.

        Returns (velocity prediction [B, C, F, H, W], hidden states after block `tap_layer`
        [B, L_tokens, dim]). With stop_at_tap the later blocks and the head are skipped and the
        prediction is None. self_attn_mask (bool [L, L], True = may attend) restricts self-attention,
        e.g. `common.attention.blockwise_causal_mask([tokens_per_frame] * frames)` for a causal backbone.
        """
        if stop_at_tap and tap_layer is None:
            raise ValueError("stop_at_tap needs a tap_layer")
        grid = self.grid(latents)
        image_context = None
        if image_emb is not None:
            if not hasattr(self.condition_embedder, "image_embedder"):
                raise ValueError("image_emb given to a WanDiT built without image_dim")
            image_context = self.condition_embedder.image_embedder(image_emb)
        temb, timestep_proj, context = self.condition(timestep, text_emb)
        taps = () if tap_layer is None else (tap_layer,)
        x, tapped = self.run_blocks(self.embed(latents), context, timestep_proj, self.rope(*grid, latents.device),
                                    text_mask, self_attn_mask, image_context, taps,
                                    stop_at=tap_layer if stop_at_tap else None)
        prediction = None if x is None else self.head(x, temb, grid)
        return prediction, tapped.get(tap_layer)
