"""The contract every World Action Model keeps, whatever its 4-tuple.

Each case is a tiny model: every recipe as shipped, and every registered component laid on a recipe
that does not use it (a new pairing of parts). Each one builds with the design it claims, trains
every objective it declares down to every weight on that objective's path, samples a finite chunk
that is zero outside the action mask, and (recipes) survives export -> load_policy -> act.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pytest
import torch
from conftest import tiny_config

from wamforge.config import validate
from wamforge.config.model import AXES
from wamforge.config.paths import RunPaths
from wamforge.config.recipes import claimed_design, load_recipe, merge, recipe_names
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.data_pipeline.schema import Batch
from wamforge.model_zoo import backbones, couplings, heads, regimes, substrates, trunks, vae
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.inference import Inference

TINY_TRUNKS = {"wan": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
               "cosmos": {"kind": "cosmos", "heads": 2, "head_dim": 16, "layers": 2, "adaln_lora_dim": 8}}
TINY_HEADS = {"cross_attention": {"kind": "cross_attention", "dim": 32, "layers": 1, "heads": 2},
              "layerwise": {"kind": "layerwise", "dim": 32, "heads": 2},
              "mixture": {"kind": "mixture", "dim": 16, "ffn_dim": 32},
              "inverse_dynamics": {"kind": "inverse_dynamics", "dim": 32, "channels": [8, 16], "grid": [2, 2]}}
# the fewest levels a Wan VAE may have: two of them halve time (stride 4), so space is strided 4 too
TINY_WAN_VAE = {"kind": "wan2.1", "base_dim": 8, "z_dim": 4, "dim_mult": [1, 2, 2], "num_res_blocks": 1}
HORIZON, TRUNK_LAYERS = 4, 2
REGISTRIES = {"substrate": substrates, "backbone": backbones, "coupling": couplings, "regime": regimes,
              "head": heads, "trunk": trunks, "vae": vae}

# Every registered component on a recipe that does not use it, each a pairing no recipe builds.
SWAPS = {
    "vae=wan2.1@uwm": ("uwm", {"vae": TINY_WAN_VAE}),  # real causal VAE latents as the joint future
    "trunk=cosmos@dit4dit": ("dit4dit", {"trunk": {"kind": "cosmos"}}),  # the head reads Cosmos' predicted latents
    "trunk=wan@mimic_video": ("mimic_video", {"trunk": {"kind": "wan"}}),  # partial denoise to tau 0.8 on Wan
    "head=layerwise@mimic_video": ("mimic_video", {"coupling": {"kind": "post_prediction_head",
                                                                "head": {"kind": "layerwise"}}}),  # on Cosmos taps
    "head=cross_attention@genie_envisioner": ("genie_envisioner", {"coupling": {
        "kind": "post_prediction_head", "head": {"kind": "cross_attention"}}}),  # one head on the last block
    "substrate=feature.tap@dit4dit": ("dit4dit", {"substrate": {"kind": "feature.tap", "layer": 1}}),  # stop early
    "backbone=hybrid@dit4dit": ("dit4dit", {"backbone": {"kind": "hybrid"}}),  # independent times, separate head
    "backbone=diffusion@uwm": ("uwm", {"backbone": {"kind": "diffusion", "timesteps": "shared"}}),  # PAD
    "regime=interactive@fast_wam": ("fast_wam", {"regime": {"kind": "interactive"}}),  # the cache across calls
    "regime=open_loop@dit4dit": ("dit4dit", {"regime": {"kind": "open_loop"}}),  # one plan, latent substrate
}


@dataclass(frozen=True)
class Case:
    recipe: str
    swap: dict | None = None

    @property
    def model_block(self) -> dict:
        """The experiment's model block: the recipe (with the swap laid on it), at tiny sizes."""
        block = merge(load_recipe(self.recipe)["model"], self.swap or {})
        return {"recipe": self.recipe, **merge(block, tiny_sizes(block))}


def tiny_sizes(block: dict) -> dict:
    """The tiny sizes of the components a model block names, keeping their kinds."""
    regime = block.get("regime", {}).get("kind", "chunked")  # the recipe's regime, at a tiny chunk
    tiny = {"regime": {"kind": regime, **({} if regime == "single_step" else {"horizon": HORIZON})},
            "text": {"dim": 32, "max_tokens": 16}}
    if "trunk" in block:  # a baseline has none
        tiny["trunk"] = TINY_TRUNKS[block["trunk"]["kind"]]
    substrate = block.get("substrate", {})
    if "layers" in substrate:  # several blocks read: the deepest ones the tiny trunk has
        n = min(len(substrate["layers"]), TRUNK_LAYERS)
        tiny["substrate"] = {"kind": substrate["kind"], "layers": list(range(TRUNK_LAYERS - n + 1, TRUNK_LAYERS + 1))}
    elif "layer" in substrate:
        tiny["substrate"] = {"kind": substrate["kind"], "layer": min(substrate["layer"], TRUNK_LAYERS)}
    head = block.get("coupling", {}).get("head")
    if head is not None:
        tiny["coupling"] = {"kind": block["coupling"]["kind"], "head": TINY_HEADS[head["kind"]]}
    return tiny


CASES = {**{name: Case(name) for name in recipe_names()},
         **{name: Case(recipe, swap) for name, (recipe, swap) in SWAPS.items()}}


def tiny_raw(case: Case, root) -> dict:
    """The tiny experiment of a case; K no longer than its chunk (a single-step design's H is 1)."""
    raw = tiny_config(root, model=case.model_block)
    horizon = case.model_block["regime"].get("horizon", 1)
    raw["eval"]["execute_steps"] = min(raw["eval"].get("execute_steps", horizon), horizon)
    return raw


def experiment(case: Case, root):
    return validate(tiny_raw(case, root))


def kinds(model_cfg) -> dict[str, str]:
    """{axis: kind} of every component a model config builds (the head where its coupling has one)."""
    out = {axis: getattr(model_cfg, axis).kind for axis in (*AXES, "trunk", "vae")}
    if getattr(model_cfg.coupling, "head", None) is not None:
        out["head"] = model_cfg.coupling.head.kind
    return out


def two_samples(cfg, seed: int = 0) -> Batch:
    """A 9-frame 32x32 batch: a sawyer sample with 4 action and proprio dims from a successful episode,
    and an action-free clip of unknown outcome."""
    g = torch.Generator().manual_seed(seed)
    a_max, p_max, horizon = cfg.model.max_action_dim, cfg.model.max_proprio_dim, cfg.model.regime.horizon
    action_mask = torch.zeros(2, horizon, a_max, dtype=torch.bool)
    action_mask[0, :, :4] = True
    proprio_mask = torch.zeros(2, p_max, dtype=torch.bool)
    proprio_mask[0, :4] = True
    return Batch(video=torch.randint(0, 256, (2, 9, 1, 3, 32, 32), generator=g, dtype=torch.uint8), latents=None,
                 video_pad=torch.zeros(2, 9, dtype=torch.bool),
                 actions=torch.randn(2, horizon, a_max, generator=g) * action_mask, action_mask=action_mask,
                 has_actions=torch.tensor([True, False]),
                 proprio=torch.randn(2, p_max, generator=g) * proprio_mask, proprio_mask=proprio_mask,
                 embodiment_id=torch.tensor([0, 1]), source_id=torch.tensor([0, 1]),
                 text=["reach the goal", "a synthetic clip"], keys=["sim/ep0/000000", "web/ep0/000000"],
                 steps_to_go=torch.tensor([10, 30]), success=torch.tensor([1.0, float("nan")]))  # value targets


def path_of(model, objective: str) -> dict[str, torch.nn.Parameter]:
    """The trainable weights an objective's loss must reach."""
    trainable = {name: p for name, p in model.named_parameters() if p.requires_grad}
    video_path = ("trunk.", "text_encoder.")
    action_path = tuple(f"{name}." for name, _ in model.named_children()
                        if name not in ("vae", "text_encoder", "trunk"))  # the bank and the coupling's networks
    prefixes = {"joint": ("",), "video": video_path, "action": action_path}[objective]
    return {name: p for name, p in trainable.items() if name.startswith(prefixes)}


def test_every_registered_component_is_exercised_by_a_case(tmp_path):
    used = {(axis, kind) for case in CASES.values() for axis, kind in kinds(experiment(case, tmp_path).model).items()}
    registered = {(axis, kind) for axis, registry in REGISTRIES.items() for kind in registry.REGISTRY}
    assert registered - used == set()


@pytest.mark.parametrize("name", CASES)
def test_it_builds_the_design_its_census_row_names(name, tmp_path):
    case = CASES[name]
    model = build_model(experiment(case, tmp_path), num_embodiments=3)
    expected = list(claimed_design(load_recipe(case.recipe))[1])
    for axis, block in (case.swap or {}).items():  # a swap changes its own axis of the 4-tuple, no other
        if axis in AXES:
            expected[AXES.index(axis)] = REGISTRIES[axis].REGISTRY[block["kind"]].label
    assert model.design == tuple(expected)


@pytest.mark.parametrize("name", CASES)
def test_each_declared_objective_gives_a_finite_loss_whose_backward_reaches_its_weights(name, tmp_path):
    cfg = experiment(CASES[name], tmp_path)
    torch.manual_seed(0)
    model, batch = build_model(cfg, num_embodiments=3), two_samples(cfg)
    assert model.capabilities.objectives
    for objective in model.capabilities.objectives:
        model.zero_grad(set_to_none=True)
        out = model.loss(batch, objective, {})
        assert torch.isfinite(out["loss"]), objective
        out["loss"].backward()
        path = path_of(model, objective)
        assert path, objective
        unreached = sorted(n for n, p in path.items() if p.grad is None)
        assert unreached == [], f"{objective}: no gradient reaches {unreached}"
        assert all(torch.isfinite(p.grad).all() for p in path.values()), objective


@pytest.mark.parametrize("name", CASES)
def test_sample_actions_is_a_finite_chunk_zero_outside_the_action_mask(name, tmp_path):
    cfg = experiment(CASES[name], tmp_path)
    torch.manual_seed(0)
    model, batch = build_model(cfg, num_embodiments=3).eval(), two_samples(cfg)
    with torch.no_grad():  # as if trained: a deterministic head's zero-initialised output is not yet zero
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    action_mask = torch.zeros(2, cfg.model.max_action_dim, dtype=torch.bool)
    action_mask[0, :4], action_mask[1, :2] = True, True  # a 4-dof and a 2-dof embodiment
    actions = model.sample_actions(batch.video[:, :1], batch.proprio, batch.proprio_mask, batch.embodiment_id,
                                   batch.text, Inference(action_steps=2, video_steps=2),
                                   generator=torch.Generator().manual_seed(0), action_mask=action_mask)
    assert actions.shape == (2, cfg.model.regime.horizon, cfg.model.max_action_dim)
    assert torch.isfinite(actions).all()
    outside = ~action_mask[:, None].expand_as(actions)
    assert torch.all(actions[outside] == 0)
    assert torch.all(actions[~outside] != 0)


@pytest.mark.parametrize("name", recipe_names())
def test_export_then_load_policy_acts_in_raw_units_with_the_saved_weights(name, built, tmp_path):
    from wamforge.training.checkpoint import save_weights
    from wamforge.training.export import export
    from wamforge.evaluation.policy import load_policy

    built_cfg, _ = built
    raw = tiny_raw(CASES[name], tmp_path)
    raw["data"]["out_dir"] = str(RunPaths.of(built_cfg).data)  # the real stats.json of a built dataset
    raw["eval"]["video_steps"] = 2  # the policy's own knobs, as exported
    cfg = validate(raw)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    torch.manual_seed(0)
    model = build_model(cfg, num_embodiments=len(registry))
    objectives = model.capabilities.objectives
    model.loss(two_samples(cfg), "joint" if "joint" in objectives else "action", {})  # records the sawyer's
    # action dims, as training does
    with torch.no_grad():  # weights no fresh build has, so only loading the saved ones can match them
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    saved = {k: v.clone() for k, v in model.state_dict().items()}
    save_weights(saved, RunPaths.of(cfg).final_weights(cfg.stages[-1].name))

    policy = load_policy(export(cfg), device="cpu")
    sawyer = registry["sawyer"]
    chunk = policy.act({"image": np.full((32, 32, 3), 120, np.uint8),
                        "proprio": np.linspace(-0.5, 0.5, len(sawyer.proprio_dims)).astype(np.float32)},
                       "reach the goal")
    assert chunk.shape == (cfg.model.regime.horizon, len(sawyer.action_dims)) and chunk.dtype == np.float32
    assert np.isfinite(chunk).all()
    if sawyer.action_low is not None:
        assert np.all(chunk >= np.array(sawyer.action_low)) and np.all(chunk <= np.array(sawyer.action_high))
    loaded = policy.model.state_dict()
    assert loaded.keys() == saved.keys()
    differ = sorted(k for k in saved if loaded[k].dtype != saved[k].dtype or not torch.equal(loaded[k], saved[k]))
    assert differ == []


# every coupling (rollout, joint generation by tokens and by tiled frames, post-prediction head reading
# decoded pixels) and every regime (open-loop, single-step, interactive, chunked) in one recipe at least
TRAINED = ("vjepa2_ac", "cosmos_policy", "pad", "vlp", "unipi", "vpp", "lingbot_va", "uwm")


@pytest.mark.parametrize("name", TRAINED)
def test_a_few_optimizer_steps_on_every_objective_move_the_weights_and_it_still_acts(name, tmp_path):
    cfg = experiment(CASES[name], tmp_path)
    torch.manual_seed(0)
    model, batch = build_model(cfg, num_embodiments=3), two_samples(cfg)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    for _ in range(2):
        for objective in model.capabilities.objectives:
            optimizer.zero_grad(set_to_none=True)
            out = model.loss(batch, objective, {})
            assert torch.isfinite(out["loss"]), objective
            out["loss"].backward()
            optimizer.step()
    moved = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any(n.startswith("trunk.") for n in moved) and len(moved) > len(before) // 2
    actions = model.eval().sample_actions(batch.video[:1, :1], batch.proprio[:1], batch.proprio_mask[:1],
                                          batch.embodiment_id[:1], batch.text[:1],
                                          Inference(action_steps=2, video_steps=2),
                                          generator=torch.Generator().manual_seed(0))
    assert actions.shape == (1, cfg.model.regime.horizon, cfg.model.max_action_dim) and torch.isfinite(actions).all()
