"""The single-step recipes (survey §4.5.3) and the mechanisms that define them.

PAD (joint generation, survey §4.3.2): the video never sees the action, over every layer, so its
prediction cannot depend on it, and image and action are trained at one shared flow time. VPP
(post-prediction head on a feature tap, §4.3.3): several trunk blocks are read and concatenated, a
resampler of learned queries compresses them to a fixed number of tokens, and the trunk runs once per
call however many action denoising steps read it. Both build, train every objective and act with
H = 1 at the contract test's tiny sizes.
"""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from wamforge.config import validate
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.common.masks import receptive_field
from wamforge.model_zoo.heads.action_expert import ActionExpert, ActionExpertConfig
from wamforge.model_zoo.inference import Inference

TINY_WAN = {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64}
TINY_EXPERT = {"kind": "cross_attention", "dim": 32, "layers": 1, "heads": 2}
RELAY_ONLY = [{"kind": "hide", "query": ["video"], "key": ["action"]}]  # hides the action, not the proprio relay
STEPS = Inference(action_steps=2, video_steps=2)


def tiny(tmp_path, recipe: str, trunk_layers: int = 2, **model):
    """The recipe at the contract test's sizes (VPP reads blocks 1 and 2 of the 2-block trunk), its
    zero-initialized outputs given weights so that no velocity is trivially zero."""
    block = {"recipe": recipe, "trunk": {**TINY_WAN, "layers": trunk_layers}, "text": {"dim": 32, "max_tokens": 16}}
    if recipe == "vpp":
        block["substrate"] = {"kind": "feature.tap", "layers": [1, 2]}
        block["coupling"] = {"kind": "post_prediction_head", "head": {**TINY_EXPERT, "queries": 4}}
    raw = tiny_config(tmp_path, model={**block, **model})
    raw["eval"]["execute_steps"] = 1  # H = 1: one action per call
    torch.manual_seed(0)
    wam = build_model(validate(raw), num_embodiments=3)
    with torch.no_grad():
        for p in wam.parameters():
            if p.numel() and not p.any():
                p.normal_(std=0.05)
    return wam


def one_step_batch(seed: int = 0) -> Batch:
    """Two 9-frame 32x32 samples with one action each: a 4-dof sawyer sample and an action-free clip."""
    g = torch.Generator().manual_seed(seed)
    action_mask = torch.zeros(2, 1, 8, dtype=torch.bool)
    action_mask[0, :, :4] = True
    proprio_mask = torch.zeros(2, 8, dtype=torch.bool)
    proprio_mask[0, :4] = True
    return Batch(video=torch.randint(0, 256, (2, 9, 1, 3, 32, 32), generator=g, dtype=torch.uint8), latents=None,
                 video_pad=torch.zeros(2, 9, dtype=torch.bool),
                 actions=torch.randn(2, 1, 8, generator=g) * action_mask, action_mask=action_mask,
                 has_actions=torch.tensor([True, False]), proprio=torch.randn(2, 8, generator=g) * proprio_mask,
                 proprio_mask=proprio_mask, embodiment_id=torch.tensor([0, 1]), source_id=torch.tensor([0, 1]),
                 text=["reach the goal", "a synthetic clip"], keys=["sim/ep0/000000", "web/ep0/000000"])


def record(obj, name: str, calls: list):
    """Wrap obj.name so that each call's positional and keyword arguments are appended to `calls`."""
    original = getattr(obj, name)

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        return original(*args, **kwargs)

    setattr(obj, name, recording)


# --- PAD ---

def pad_mask(model) -> torch.Tensor:
    """The self-attention mask the trunk is actually given in a joint training step."""
    calls = []
    record(model.trunk, "run_blocks", calls)
    model.loss(one_step_batch(), "joint", {})
    return calls[0][1]["self_attn_mask"]


def test_pad_hides_the_action_from_the_video_over_every_layer_and_a_relay_would_not(tmp_path):
    model = tiny(tmp_path, "pad")
    video = model.video_tokens(one_step_batch())
    action = slice(video, video + model.horizon)
    mask = pad_mask(model)
    assert mask.shape == (video + 2, video + 2)  # video, one action token, one proprio token, no registers
    field = receptive_field(mask, layers=len(model.trunk.blocks))
    assert not field[:video, action].any()
    assert mask[action].all()  # the action token sees everything, as in PAD

    relayed = tiny(tmp_path, "pad", coupling={"kind": "joint_generation", "registers": 0,
                                              "action_positions": "rope1d", "attention": RELAY_ONLY})
    one_layer = pad_mask(relayed)
    assert not one_layer[:video, action].any()  # each layer alone hides the action...
    assert receptive_field(one_layer, layers=2)[:video, action].all()  # ...the proprio token hands it over


def test_pad_video_prediction_does_not_change_when_only_the_action_tokens_change(tmp_path):
    batch = one_step_batch()

    def video_velocities(model):
        observed = model.encode_video(batch.video[:, :1])
        future = torch.randn(2, observed.shape[1], model.latent_frames - 1, *observed.shape[3:],
                             generator=torch.Generator().manual_seed(1))
        half = torch.full((2,), 0.5)
        text = model.encode_text(batch.text, observed.device)
        out = []
        for seed in (2, 3):  # two different noisy actions, everything else equal
            actions = torch.randn(2, 1, 8, generator=torch.Generator().manual_seed(seed))
            with torch.no_grad():
                out.append(model.coupling.velocities(model, observed, future, half, actions, half,
                                                     batch.action_mask.float(), batch.proprio,
                                                     batch.proprio_mask, batch.embodiment_id, text))
        return out

    (video_a, action_a), (video_b, action_b) = video_velocities(tiny(tmp_path, "pad"))
    assert not torch.allclose(action_a, action_b)
    torch.testing.assert_close(video_a, video_b, rtol=0, atol=1e-6)

    (video_a, _), (video_b, _) = video_velocities(tiny(tmp_path, "pad", coupling={
        "kind": "joint_generation", "registers": 0, "action_positions": "rope1d", "attention": []}))
    assert (video_a - video_b).abs().max() > 1e-4  # with full attention the same change does reach the video


def test_pad_trains_image_and_action_at_one_shared_time(tmp_path):
    model = tiny(tmp_path, "pad")
    batch = one_step_batch()
    calls = []
    record(model.trunk, "condition", calls)
    torch.manual_seed(4)
    model.loss(batch, "joint", {})
    timestep = calls[0][0][0]  # per token, on Wan's [0, 1000] scale
    video = model.video_tokens(batch)
    per_frame = video // model.latent_frames
    future, action = timestep[:, model.clean_latents * per_frame:video], timestep[:, video]
    assert torch.all(future == future[:, :1])  # one time over the whole future
    assert 0 < future[0, 0] < 1000 and action[0] == future[0, 0]  # the action shares it
    assert action[1] == 1000  # the action-free clip's action stream is pure noise


# --- VPP ---

def test_the_resampler_gives_queries_tokens_whatever_the_context_length():
    torch.manual_seed(0)
    expert = ActionExpert(ActionExpertConfig(**TINY_EXPERT, queries=5), context_dim=64, horizon=1)
    tokens = torch.randn(2, 1, 32), torch.randn(2, 1, 32)
    outputs = []
    for length in (3, 40):
        context = expert.prepare(torch.randn(2, length, 64))
        assert all(k.shape == v.shape == (2, 2, 5, 16) for k, v in context.per_block)
        outputs.append(expert(*tokens, torch.full((2,), 500.0), context))
    assert not torch.allclose(*outputs)  # the few tokens still carry the context they were resampled from


def test_the_multi_layer_tap_concatenates_the_listed_blocks_and_no_later_one(tmp_path):
    model = tiny(tmp_path, "vpp", trunk_layers=3).eval()
    batch, contexts = one_step_batch(), []
    record(model.action_expert, "prepare", contexts)

    def head_context():
        model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                             batch.text, STEPS, generator=torch.Generator().manual_seed(0))
        return contexts[-1][0][0]

    third_block_runs = []
    model.trunk.blocks[2].register_forward_hook(lambda *_: third_block_runs.append(1))
    before = head_context()
    assert before.shape[-1] == 2 * model.trunk.dim  # blocks 1 and 2, side by side along channels
    assert third_block_runs == []  # the trunk stops after the deepest block read
    with torch.no_grad():
        for p in model.trunk.blocks[2].parameters():  # block 3: not listed, after the last one
            p.add_(torch.randn_like(p))
    torch.testing.assert_close(head_context(), before, rtol=0, atol=0)
    with torch.no_grad():
        for p in model.trunk.blocks[1].ffn.parameters():  # block 2: listed, and last
            p.add_(torch.randn_like(p))
    after = head_context()
    torch.testing.assert_close(after[..., :model.trunk.dim], before[..., :model.trunk.dim], rtol=0, atol=0)
    assert not torch.allclose(after[..., model.trunk.dim:], before[..., model.trunk.dim:])


@pytest.mark.parametrize("action_steps", [1, 4])
def test_vpp_runs_the_trunk_and_the_resampler_once_per_act_call(action_steps, tmp_path):
    model = tiny(tmp_path, "vpp").eval()
    batch = one_step_batch()
    counts = {"trunk": 0, "resampler": 0, "expert": 0}

    def counter(name):
        def hook(*_):
            counts[name] += 1
        return hook

    model.trunk.blocks[0].register_forward_hook(counter("trunk"))  # every trunk pass goes through block 1
    model.action_expert.resampler.register_forward_hook(counter("resampler"))
    model.action_expert.register_forward_hook(counter("expert"))
    model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id, batch.text,
                         Inference(action_steps=action_steps, video_steps=4))
    assert counts == {"trunk": 1, "resampler": 1, "expert": action_steps}


# --- both ---

def path_of(model, objective: str) -> dict[str, torch.nn.Parameter]:
    """The trainable weights an objective's loss must reach (as the contract test defines them)."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    action = tuple(f"{name}." for name, _ in model.named_children() if name not in ("vae", "text_encoder", "trunk"))
    prefixes = {"joint": ("",), "video": ("trunk.", "text_encoder."), "action": action}[objective]
    return {name: p for name, p in trainable.items() if name.startswith(prefixes)}


@pytest.mark.parametrize("recipe", ["pad", "vpp"])
def test_the_recipe_trains_every_objective_and_acts_one_step_at_a_time(recipe, tmp_path):
    model, batch = tiny(tmp_path, recipe), one_step_batch()
    assert model.design[3] == "Single-step" and model.capabilities.horizon == 1
    for objective in model.capabilities.objectives:
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, objective, {})
        assert torch.isfinite(out["loss"]), objective
        out["loss"].backward()
        unreached = sorted(n for n, p in path_of(model, objective).items() if p.grad is None)
        assert unreached == [], f"{objective}: no gradient reaches {unreached}"

    model.eval()
    action_mask = torch.zeros(2, 8, dtype=torch.bool)
    action_mask[0, :4], action_mask[1, :2] = True, True
    for render_future in (False, True):  # PAD's joint denoising renders the future beside the action
        actions = model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                       batch.text, Inference(2, 2, render_future),
                                       generator=torch.Generator().manual_seed(0), action_mask=action_mask)
        assert actions.shape == (2, 1, 8) and torch.isfinite(actions).all()
        assert torch.all((actions != 0) == action_mask[:, None])
