"""Diffusion Policy (Chi et al.) as the no-future baseline: its recipe builds through build_model as a
baseline, not a WAM; it refuses what it cannot serve with one sentence; it learns; it samples masked,
seeded chunks in as many DDIM steps as the inference controller asks; `wamforge recipes` lists it."""
from __future__ import annotations

import pytest
import torch
from conftest import tiny_config
from rich.console import Console
from safetensors.torch import load_file, save_file

from wamforge.config import ConfigError, validate
from wamforge.config.recipes import recipe_rows
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo.baselines import DiffusionPolicy
from wamforge.model_zoo.build import build_model, design
from wamforge.model_zoo.census import BaselineDesign, BaselineRow, find, load_census, recipes_table
from wamforge.model_zoo.inference import Inference

HORIZON = 4  # the recipe's chunk, DP3's Meta-World setting
# smaller still than the recipe, so that training steps take milliseconds on two shared cores
SMALLER = {"kind": "diffusion_policy", "widths": [16, 32], "blocks_per_stage": 1, "keypoints": 8,
           "image_features": 16, "down_dims": [16, 32, 64]}


def experiment(root, model: dict | None = None, **changes):
    """The tiny experiment on the diffusion_policy recipe, with `model` laid over the recipe's block."""
    raw = tiny_config(root, model={"recipe": "diffusion_policy", **(model or {})})
    for section, values in changes.items():
        raw[section] = {**raw[section], **values}
    return validate(raw)


def batch_of(cfg, seed: int = 0) -> Batch:
    """Two samples with actions: a 4-dof embodiment (id 0) and a 2-dof one (id 1), padded to A_max."""
    g = torch.Generator().manual_seed(seed)
    a_max, p_max = cfg.model.max_action_dim, cfg.model.max_proprio_dim
    action_mask = torch.zeros(2, HORIZON, a_max, dtype=torch.bool)
    action_mask[0, :, :4], action_mask[1, :, :2] = True, True
    proprio_mask = torch.zeros(2, p_max, dtype=torch.bool)
    proprio_mask[:, :3] = True
    return Batch(video=torch.randint(0, 256, (2, 9, 1, 3, 32, 32), generator=g, dtype=torch.uint8), latents=None,
                 video_pad=torch.zeros(2, 9, dtype=torch.bool),
                 actions=torch.randn(2, HORIZON, a_max, generator=g) * action_mask, action_mask=action_mask,
                 has_actions=torch.tensor([True, True]),
                 proprio=torch.randn(2, p_max, generator=g) * proprio_mask, proprio_mask=proprio_mask,
                 embodiment_id=torch.tensor([0, 1]), source_id=torch.tensor([0, 0]),
                 text=["reach the goal", "push the puck"], keys=["sim/ep0/000000", "sim/ep1/000000"])


def sample(model, batch, steps: int = 3, seed: int = 0, action_mask=None) -> torch.Tensor:
    return model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                batch.text, Inference(action_steps=steps),
                                generator=torch.Generator().manual_seed(seed), action_mask=action_mask)


@pytest.fixture(autouse=True)
def one_thread():
    """Models this small gain nothing from a second thread, and on shared cores two threads stall at
    every operator's barrier whenever another process holds a core (seconds per step instead of ms)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture()
def built(tmp_path):
    cfg = experiment(tmp_path, {"baseline": SMALLER})
    torch.manual_seed(0)
    return cfg, build_model(cfg, num_embodiments=3), batch_of(cfg)


def test_the_recipe_builds_a_baseline_from_scratch_not_a_wam(tmp_path):
    cfg = experiment(tmp_path)  # the recipe as shipped
    model = build_model(cfg, num_embodiments=3)
    assert isinstance(model, DiffusionPolicy) and cfg.model.baseline.kind == "diffusion_policy"
    assert model.design == design(cfg.model) == BaselineDesign("Diffusion Policy")
    assert all("baseline" in axis for axis in design(cfg.model))  # what a reader of four axes sees
    capabilities = model.capabilities
    assert (capabilities.objectives, capabilities.horizon, capabilities.kv_cache) == (("action",), HORIZON, False)
    assert set(capabilities.partition_units) <= {name for name, _ in model.named_children()}
    assert not hasattr(model, "trunk") and not hasattr(model, "vae")
    assert all(p.requires_grad for p in model.parameters())
    assert model.video_tokens(batch_of(cfg)) == 0


def test_the_ignored_axes_are_not_checked_when_a_baseline_is_set(tmp_path):
    # joint_generation on the default feature.tap substrate is refused for a WAM; a baseline builds none of it
    cfg = experiment(tmp_path, {"coupling": {"kind": "joint_generation"}})
    assert isinstance(build_model(cfg, num_embodiments=1), DiffusionPolicy)


@pytest.mark.parametrize("model, changes, match", [
    ({"condition_dropout": 0.1}, {}, "reads no caption"),
    ({"regime": {"kind": "chunked", "horizon": 6}}, {}, "must divide by 4"),
    ({"baseline": {"kind": "diffusion_policy", "widths": [16, 24]}}, {}, "multiples of 16"),
])
def test_settings_it_cannot_honour_are_refused_at_validation(tmp_path, model, changes, match):
    with pytest.raises(ConfigError, match=match):
        experiment(tmp_path, model, **changes)


@pytest.mark.parametrize("changes, match", [
    ({"training": {"sequence_parallel": 2}}, "no trunk sequence to shard"),
    ({"data": {"caches": ["vae"]}}, "remove 'vae' from data.caches"),
])
def test_what_the_trainer_would_ask_of_a_trunk_or_vae_is_refused_at_build(tmp_path, changes, match):
    with pytest.raises(ValueError, match=match):
        build_model(experiment(tmp_path, **changes), num_embodiments=1)


def test_objectives_and_knobs_it_has_no_use_for_are_refused(built):
    _, model, batch = built
    with pytest.raises(ValueError, match="trains action only"):
        model.loss(batch, "video", {})
    for knobs, match in (({"guidance": 2.0}, "nothing to guide"), ({"render_future": True}, "no future video"),
                         ({"action_steps": 101}, "must lie in 1..100")):
        with pytest.raises(ValueError, match=match):
            model.eval().sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                        batch.text, Inference(**knobs))


def test_the_loss_falls_when_overfitting_one_batch(built):
    _, model, batch = built

    def loss_of_the_batch() -> dict:  # one batch: the same diffusion steps, noise and crops every time
        with torch.random.fork_rng():
            torch.manual_seed(1)
            return model.loss(batch, "action", {})

    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    before = loss_of_the_batch()["loss"].item()
    for _ in range(30):
        out = loss_of_the_batch()
        optimizer.zero_grad()
        out["loss"].backward()
        optimizer.step()
    assert loss_of_the_batch()["loss"].item() < 0.5 * before
    per_sample = out["per_sample"]
    assert per_sample["action_count"].tolist() == [4.0 * HORIZON, 2.0 * HORIZON]  # real entries only
    assert per_sample["video_loss"].tolist() == [0.0, 0.0] and out["video_loss"] == 0


def test_sample_actions_is_masked_seeded_and_takes_the_asked_ddim_steps(built):
    cfg, model, batch = built
    model.eval()
    action_mask = torch.zeros(2, cfg.model.max_action_dim, dtype=torch.bool)
    action_mask[0, :4], action_mask[1, :2] = True, True
    actions = sample(model, batch, action_mask=action_mask)
    assert actions.shape == (2, HORIZON, cfg.model.max_action_dim) and torch.isfinite(actions).all()
    outside = ~action_mask[:, None].expand_as(actions)
    assert torch.all(actions[outside] == 0) and torch.all(actions[~outside] != 0)
    assert torch.equal(actions, sample(model, batch, action_mask=action_mask))
    assert not torch.equal(actions, sample(model, batch, seed=1, action_mask=action_mask))

    calls = []
    hook = model.noise_predictor.register_forward_hook(lambda *_: calls.append(1))
    for steps in (1, 3, 7):
        calls.clear()
        sample(model, batch, steps=steps, action_mask=action_mask)
        assert len(calls) == steps
    hook.remove()


def test_without_a_mask_it_acts_in_the_dims_training_saw_and_survives_a_safetensors_round_trip(built, tmp_path):
    cfg, model, batch = built
    model.loss(batch, "action", {})  # in training mode: records each embodiment's action dims
    model.eval()
    actions = sample(model, batch)
    assert torch.all(actions[0, :, 4:] == 0) and torch.all(actions[1, :, 2:] == 0)

    save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    fresh = build_model(cfg, num_embodiments=3)
    fresh.load_state_dict(load_file(str(tmp_path / "model.safetensors")))
    assert torch.equal(sample(fresh.eval(), batch), actions)


def test_wamforge_recipes_lists_it_as_a_baseline_with_no_census_row():
    assert find(load_census(), "diffusion_policy") == BaselineRow("Diffusion Policy")
    console = Console(record=True, width=220)
    console.print(recipes_table(recipe_rows()))
    text = console.export_text()
    line = next(line for line in text.splitlines() if "diffusion_policy" in line)
    assert "Baseline" in line and "baseline: no census row" in line and "none" not in line
    assert "(1 baseline)" in text
