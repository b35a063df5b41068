import json
import re

import pytest
import torch
from conftest import tiny_config
from model_zoo.test_contract import CASES, experiment
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from wamforge.cli import main
from wamforge.config import validate
from wamforge.config.recipes import recipe_names
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES, WanSize
from wamforge.training.plan import GIB, candidates, experiment_plan, fit, plan, planning_batch


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


@pytest.mark.parametrize("name", recipe_names())
def test_experiment_plan_counts_what_the_real_training_step_computes(name, tmp_path):
    """Counted on fake tensors, the plan's FLOPs are those of the real tiny model's loss and backward on
    CPU; a joint generation puts its action, proprio and register tokens (or tiled frames) in the
    trunk's sequence beside the video."""
    cfg = experiment(CASES[name], tmp_path)
    estimate = experiment_plan(cfg)
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=1)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model.loss(planning_batch(cfg, model), estimate.objective, {})["loss"].backward()
    assert estimate.flops_train_step == pytest.approx(counter.get_total_flops(), rel=0.02)
    assert estimate.params == sum(p.numel() for p in model.parameters())
    if cfg.model.baseline is None:
        assert estimate.video_tokens == model.video_tokens(planning_batch(cfg, model)) > 0
        assert estimate.activation_bytes > estimate.activation_bytes_checkpointed > 0
    if cfg.model.coupling.kind in ("joint_generation", "tiled_joint_generation"):
        assert estimate.tokens > estimate.video_tokens


@pytest.fixture(scope="module")
def wan_14b_plan(tmp_path_factory):
    """UWM's design on the Wan2.1 14B trunk and the Wan VAE, 21 frames at 480x832, 8 ranks."""
    model = {"recipe": "uwm", "trunk": {"kind": "wan", "size": "wan2.1-14b"}, "vae": {"kind": "wan2.1"},
             "text": {"dim": 4096, "max_tokens": 512}, "regime": {"kind": "chunked", "horizon": 8}}
    raw = tiny_config(tmp_path_factory.mktemp("plan"), model=model)
    raw["data"].update(resolution=[480, 832], clip_frames=21)
    raw["training"].update(world_size=8, micro_batch_per_rank=1)
    return experiment_plan(validate(raw))


def test_a_14b_recipe_takes_the_cheapest_setting_that_fits_80_gib(wan_14b_plan):
    p = wan_14b_plan
    assert p.params > 14e9 and p.tokens > p.video_tokens == 6 * 30 * 52
    assert p.flops_train_step_checkpointed > p.flops_train_step > 2 * p.flops_forward
    result = fit(p, 80)
    order = [(s.activation_checkpointing, s.zero_stage, s.sequence_parallel) for s in candidates(p, result.gpu_bytes)]
    assert order == sorted(order) and {sp for *_, sp in order} == {1, 2, 4, 8}  # 40 heads, 8 ranks
    chosen = result.chosen
    assert chosen is not None and result.considered[-1] == chosen
    assert all(not result.fits(s) for s in result.considered[:-1])  # every cheaper setting is too big
    states = p.model_state_bytes[f"zero{chosen.zero_stage}"]
    activations = p.activation_bytes_checkpointed if chosen.activation_checkpointing else p.activation_bytes
    assert states + activations / chosen.sequence_parallel + chosen.margin_bytes <= 80 * GIB
    assert f"training.zero_stage: {chosen.zero_stage}" in chosen.config_lines()


def test_a_gpu_too_small_for_every_setting_gets_one_sentence(wan_14b_plan):
    result = fit(wan_14b_plan, 16)
    assert result.chosen is None and len(result.considered) == len(candidates(wan_14b_plan, result.gpu_bytes))
    message = result.message
    assert message.startswith("nothing fits 16.0 GiB per GPU") and len(re.split(r"[.;]\s", message)) == 1
    best = min(result.considered, key=lambda s: s.total_bytes)
    assert best.total_bytes > 16 * GIB and f"ZeRO-{best.zero_stage}" in message


def test_cli_plan_fits_a_gpu_and_prints_the_config_lines(capsys):
    code = main(["plan", "configs/experiments/quickstart.yaml", "--gpu-memory", "2", "--json"])
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["objective"] == "joint" and out["fit"]["chosen"]["fits"]
    assert out["fit"]["chosen"]["config"] == ["training.zero_stage: 0", "training.sequence_parallel: 1",
                                              "model.trunk.activation_checkpointing: false"]


def test_a_release_experiment_plans_without_its_checkpoints():
    """The frozen umT5's captions come from its cache and the VAE's shape is its config's: neither
    checkpoint has to be on the planning machine, and the frozen encoder adds no weights."""
    from wamforge.config import load_config
    from wamforge.training.plan import experiment_plan

    cfg = load_config("configs/experiments/fast_wam_wan2.1_1.3b.yaml",
                      ["data.clip_frames=5", "data.resolution=[64,64]"])
    p = experiment_plan(cfg)
    trunk = plan(WAN_SIZES["wan2.1-1.3b"], 5, (64, 64), world_size=8).params
    assert trunk < p.params - p.frozen_params < trunk * 1.2  # the trunk and the action expert, no text encoder
    assert 100e6 < p.frozen_params < 150e6  # the Wan2.1 VAE: its weights only, on every rank
    assert p.video_tokens == 2 * 4 * 4 and p.flops_train_step > 0
