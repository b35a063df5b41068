"""Token streams (positions, masks) inside a real coupling, and the inference controller's knobs."""
from __future__ import annotations

import pytest
import torch
from test_joint_generation import HORIZON, batch, uwm

from wamforge.model_zoo.common.positions import stream_positions, time_band_rotary
from wamforge.model_zoo.common.timesteps import shifted_schedule
from wamforge.model_zoo.inference import Inference, stream_steps
from wamforge.model_zoo.trunks.wan.model import WanRotaryPosEmbed


def test_fractional_positions_end_the_chunk_on_the_last_future_frame():
    positions = stream_positions("fractional", count=4, first_future=1, future_frames=2, device="cpu")
    assert positions.tolist() == [0.5, 1.0, 1.5, 2.0]  # between the current frame (0) and the last one (2)
    assert stream_positions("rope1d", 3, 1, 2, "cpu").tolist() == [0, 1, 2]
    assert stream_positions("learned", 3, 1, 2, "cpu") is None


def test_a_one_dimensional_position_rotates_the_time_band_like_a_video_frame_there():
    rope = WanRotaryPosEmbed(head_dim=24)
    video_cos, video_sin = rope(3, 1, 1, "cpu")  # frames 0, 1, 2 at height = width = 0
    cos, sin = time_band_rotary(rope, torch.tensor([0.0, 1.0, 2.0, 1.5]))
    assert torch.allclose(cos[:3], video_cos) and torch.allclose(sin[:3], video_sin)
    assert not torch.allclose(cos[3], cos[1])  # a fractional position is a position of its own


@pytest.mark.parametrize("positions", ["learned", "rope1d", "fractional"])
def test_each_action_position_scheme_trains_and_changes_what_the_model_predicts(positions, tmp_path):
    model = uwm(tmp_path, coupling={"kind": "joint_generation", "registers": 2, "action_positions": positions})
    torch.manual_seed(0)
    out = model.loss(batch(), "joint", {})
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and model.streams.registers.grad.abs().sum() > 0
    if positions != "learned":  # no learned table: the rotation alone tells action tokens apart
        assert model.streams.positions is None


def video_velocity(model, actions):
    b = batch((True, True))
    observed = model.encode_video(b.video[:, :1])
    future = torch.randn(2, observed.shape[1], model.latent_frames - 1, *observed.shape[3:],
                         generator=torch.Generator().manual_seed(3))
    mask = torch.ones(2, 1, 8)
    with torch.no_grad():
        v_video, v_action = model.coupling.velocities(
            model, observed, future, torch.full((2,), 0.5), actions, torch.full((2,), 0.7), mask, b.proprio,
            b.proprio_mask, b.embodiment_id, model.encode_text(b.text, "cpu"))
    return v_video, v_action


def test_a_hide_rule_keeps_the_video_prediction_bit_identical_whatever_the_actions(tmp_path):
    """PAD's topology on the joint sequence: video (and the tokens video sees) never see the actions."""
    rule = {"kind": "hide", "query": ["video", "proprio", "register"], "key": ["action"]}
    model = uwm(tmp_path, coupling={"kind": "joint_generation", "registers": 2, "attention": [rule]})
    actions = torch.randn(2, HORIZON, 8)
    v_video, v_action = video_velocity(model, actions)
    v_video_2, v_action_2 = video_velocity(model, actions * 50 + 3)
    assert torch.equal(v_video, v_video_2) and not torch.allclose(v_action, v_action_2)
    full = uwm(tmp_path, coupling={"kind": "joint_generation", "registers": 2})  # control: full attention
    assert not torch.allclose(video_velocity(full, actions)[0], video_velocity(full, actions * 50 + 3)[0])


def test_per_stream_step_counts_move_each_stream_only_on_its_own_grid():
    moves = stream_steps({"action": 4, "video": 2})
    assert [m["action"] for m in moves] == [(0, 1), (1, 2), (2, 3), (3, 4)]
    assert [m["video"] for m in moves] == [(0, 0), (0, 1), (1, 1), (1, 2)]  # two real steps in four iterations


def test_a_partial_schedule_stops_at_the_asked_noise_level_under_any_shift():
    for shift in (1.0, 3.0):
        times = shifted_schedule(4, shift, end=0.8)
        assert times[0] == 1.0 and times[-1] == pytest.approx(0.8) and times == sorted(times, reverse=True)
    assert shifted_schedule(4) == [1.0, 0.75, 0.5, 0.25, 0.0]


def test_guidance_runs_an_unconditioned_pass_and_condition_dropout_empties_training_captions(tmp_path):
    model = uwm(tmp_path, condition_dropout=0.5)
    seen = []
    encode = model.text_encoder.forward
    model.text_encoder.forward = lambda texts: seen.append(list(texts)) or encode(texts)
    torch.manual_seed(0)
    model.train()
    model.loss(batch(), "joint", {})
    assert "" in seen[-1] and any(t for t in seen[-1])  # with this seed one of the two captions is dropped
    model.eval()
    seen.clear()
    model.loss(batch(), "joint", {})
    assert "" not in seen[-1]  # never at evaluation

    b = batch((True, True))
    args = (b.video[:, :1], b.proprio, b.proprio_mask, b.embodiment_id, b.text)
    plain = model.sample_actions(*args, inference=Inference(action_steps=2), generator=torch.Generator().manual_seed(0))
    seen.clear()
    guided = model.sample_actions(*args, inference=Inference(action_steps=2, guidance=3.0),
                                  generator=torch.Generator().manual_seed(0))
    assert ["", ""] in seen and not torch.allclose(plain, guided)


@pytest.mark.parametrize("head", ["cross_attention", "layerwise"])
def test_a_context_projected_once_acts_exactly_as_the_features_it_came_from(head):
    from wamforge.model_zoo.heads import REGISTRY, ActionExpertConfig, LayerwiseExpertConfig

    torch.manual_seed(0)
    cfg = ActionExpertConfig(dim=16, layers=2, heads=2) if head == "cross_attention" else \
        LayerwiseExpertConfig(dim=16, heads=2)
    expert = REGISTRY[head](cfg, context_dim=24, horizon=HORIZON, **({"layers": 2} if head == "layerwise" else {}))
    features = torch.randn(2, 7, 24) if head == "cross_attention" else [torch.randn(2, 7, 24), torch.randn(2, 5, 24)]
    actions, proprio, t = torch.randn(2, HORIZON, 16), torch.randn(2, 1, 16), torch.rand(2) * 1000
    with torch.no_grad():
        assert torch.equal(expert(actions, proprio, t, features), expert(actions, proprio, t, expert.prepare(features)))
