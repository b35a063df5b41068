"""Baselines at equal budget: an experiment with the future taken out, same data, stages and steps.

`no_future` keeps the model and its action head and turns every future-prediction loss off: each
stage trains the action loss alone (a video stage on its own mixture, whose action-free samples
then teach nothing), as the ablations of Fast-WAM, PAD and Cosmos-Policy do. `diffusion_policy`
swaps the model for Chi et al.'s Diffusion Policy, trained from scratch in every stage.
"""
from __future__ import annotations

import copy

BASELINES = ("no_future", "diffusion_policy")


def derive(raw: dict, baseline: str) -> dict:
    """The baseline of an experiment (its raw, unvalidated dict), under the name `<name>-<baseline>`."""
    if baseline not in BASELINES:
        raise ValueError(f"unknown baseline '{baseline}'; one of {', '.join(BASELINES)}")
    raw = copy.deepcopy(raw)
    raw["name"] = f"{raw['name']}-{baseline}"
    for stage in raw["stages"]:
        stage["objective"] = "action"
        stage["loss_weights"] = {"video": 0.0, "action": 1.0}
        if baseline == "diffusion_policy":
            stage.pop("trainable", None)  # no trunk to keep frozen: every parameter trains
    if baseline == "diffusion_policy":
        model = raw.get("model", {})
        raw["model"] = {"recipe": "diffusion_policy",
                        **{k: model[k] for k in ("max_action_dim", "max_proprio_dim", "normalization") if k in model}}
    return raw
