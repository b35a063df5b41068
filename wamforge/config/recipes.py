"""Recipes as data: `configs/recipes/<name>.yaml` (shipped in the package as wamforge/recipes/) names a
published WAM as a point of the design space: its paper, its census row, and a `model:` block that
`model.recipe: NAME` lays under an experiment's model block (the experiment, then `--set`, win).

A recipe file: a header comment citing the paper; `census: {wam, paper, url}` (wam names the census
row; a published WAM the census does not list says `row: none` and states the 4-tuple it claims as
`design: [substrate, backbone, coupling, regime]`); `departs:` what the tiny recipe leaves out or changes, and why; `model:`; optionally
`base: OTHER` to start from another recipe's model block.
"""
from __future__ import annotations

import copy
from importlib.resources import files
from pathlib import Path

import yaml

RECIPES_DIR = Path(str(files("wamforge") / "recipes"))


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def load_recipe(name: str) -> dict:
    path = RECIPES_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ValueError(f"no recipe named '{name}'; known: {', '.join(recipe_names())}")
    recipe = yaml.safe_load(path.read_text()) or {}
    if "base" in recipe:
        base = load_recipe(recipe["base"])
        recipe["model"] = merge(base.get("model", {}), recipe.get("model", {}))
    return recipe


def merge(under: dict, over: dict) -> dict:
    """`over` laid on `under`, recursively; a component block whose `kind` differs (or a plain kind
    name) replaces the one under it whole, so no field of another component leaks in; so does one
    naming a released `size`, which fixes the whole shape."""
    out = copy.deepcopy(under)
    for key, value in over.items():
        below = out.get(key)
        if isinstance(value, dict) and isinstance(below, dict) and "size" not in value \
                and value.get("kind", below.get("kind")) == below.get("kind"):
            out[key] = merge(below, value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def lay_recipe(model: dict) -> dict:
    """An experiment's raw model block with its recipe's model block laid under it."""
    name = model.get("recipe")
    return merge(load_recipe(name).get("model", {}), model) if name else model


NOT_IN_CENSUS = "not in the census"  # the philosophy shown for a recipe with `census.row: none`


def claimed_design(recipe: dict, census: list | None = None) -> tuple[str, tuple]:
    """(philosophy, 4-tuple) a recipe claims: its census row's, or, with `census.row: none`, the
    `census.design` it states."""
    from wamforge.model_zoo.census import find, load_census

    block = recipe["census"]
    if block.get("row") == "none":
        if len(block.get("design", ())) != 4:
            raise ValueError(f"recipe of {block['wam']!r} says census.row: none, so census.design must list "
                             f"the 4-tuple it claims (substrate, backbone, coupling, regime)")
        return NOT_IN_CENSUS, tuple(block["design"])
    row = find(census if census is not None else load_census(), block["wam"])
    return row.philosophy, row.design


def recipe_rows() -> list[dict]:
    """Per recipe: name, paper, philosophy, the design its model builds and its census row's design."""
    from wamforge.config.model import ModelConfig
    from wamforge.model_zoo.build import design
    from wamforge.model_zoo.census import load_census

    census = load_census()
    rows = []
    for name in recipe_names():
        recipe = load_recipe(name)
        philosophy, claimed = claimed_design(recipe, census)
        rows.append({"name": name, "paper": recipe["census"]["paper"], "philosophy": philosophy,
                     "design": design(ModelConfig.model_validate({**recipe["model"], "recipe": name})),
                     "census_design": claimed})
    return rows
