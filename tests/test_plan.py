import json

import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wamforge.cli import main
from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES, WanSize
from wamforge.training.plan import plan


def test_released_sizes_have_their_published_parameter_counts():
    assert plan(WAN_SIZES["wan2.1-1.3b"], 81, (480, 832), world_size=8).params == 1_418_996_800
    big = plan(WAN_SIZES["wan2.1-14b"], 81, (480, 832), world_size=64)
    assert big.params == 14_288_491_584 and big.tokens == 21 * 30 * 52


def test_forward_flops_match_torch_flop_counter():
    shape = WanSize(dim=64, ffn_dim=256, layers=2, heads=2, text_dim=32)
    frames, resolution, text_tokens = 9, (64, 96), 8
    estimate = plan(shape, frames, resolution, world_size=1, text_tokens=text_tokens)
    torch.manual_seed(0)
    trunk = shape.build()
    latents = torch.randn(1, 16, 3, resolution[0] // 8, resolution[1] // 8)
    # the math backend spells attention as matmuls, which the counter sees; fused kernels it may not
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        trunk(latents, torch.tensor([500.0]), torch.randn(1, text_tokens, 32))
    measured = counter.get_total_flops()
    assert estimate.tokens == 3 * 4 * 6
    assert estimate.flops_forward == pytest.approx(measured, rel=0.08)
    assert estimate.flops_train_step == 3 * estimate.flops_forward


def test_memory_falls_with_zero_stage_and_world_size():
    small = plan(WAN_SIZES["wan2.1-14b"], 81, (480, 832), world_size=8).model_state_bytes
    large = plan(WAN_SIZES["wan2.1-14b"], 81, (480, 832), world_size=64).model_state_bytes
    assert small["zero0"] > small["zero1"] > small["zero2"] > small["zero3"]
    assert large["zero3"] < small["zero3"] and large["zero0"] == small["zero0"]
    p = plan(WAN_SIZES["wan2.1-1.3b"], 81, (480, 832), world_size=8)
    assert p.activation_bytes_checkpointed < p.activation_bytes / 5


def test_cli_plan_prints_json(capsys):
    code = main(["plan", "configs/experiments/quickstart.yaml", "--size", "wan2.1-1.3b", "--frames", "81",
                 "--resolution", "480x832", "--world-size", "8", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params"] == 1_418_996_800 and set(out["model_state_bytes"]) == {"zero0", "zero1", "zero2", "zero3"}


def test_image_conditioned_flops_match_torch_flop_counter():
    shape = WanSize(dim=64, ffn_dim=256, layers=2, heads=2, text_dim=32, image_dim=48)
    estimate = plan(shape, 9, (64, 96), world_size=1, text_tokens=8)
    torch.manual_seed(0)
    trunk = shape.build()
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        trunk(torch.randn(1, 16, 3, 8, 12), torch.tensor([500.0]), torch.randn(1, 8, 32),
              image_emb=torch.randn(1, 257, 48))
    assert estimate.flops_forward == pytest.approx(counter.get_total_flops(), rel=0.08)
