"""The model zoo's architecture: one config class and one home folder per registered kind, every kind
built by a recipe, no import of the layers above, short modules, and recipes that agree with the census."""
from __future__ import annotations

import ast
import importlib
import inspect
import typing
from collections import Counter
from pathlib import Path

import pytest

import wamforge.model_zoo
from wamforge.config.model import ModelConfig
from wamforge.config.recipes import load_recipe, recipe_names, recipe_rows

ZOO = Path(wamforge.model_zoo.__file__).parent
# axis: (package under model_zoo/, the discriminated union of its config classes)
AXES = {"substrate": ("substrates", "SubstrateConfig"), "backbone": ("backbones", "BackboneConfig"),
        "coupling": ("couplings", "CouplingConfig"), "regime": ("regimes", "RegimeConfig"),
        "head": ("heads", "HeadConfig"), "trunk": ("trunks", "TrunkConfig"), "vae": ("vae", "VAEConfig")}
RECIPE_AXES = ("substrate", "backbone", "coupling", "regime", "head")
# Kinds no recipe builds, exercised only as swaps in test_contract.py. None today: every kind has a
# recipe. List one here only when no published WAM uses it, with the reason beside it.
CONTRACT_ONLY: dict[str, set[str]] = {}
FORBIDDEN = ("wamforge.training", "wamforge.evaluation", "wamforge.launchers")
MAX_LINES = 400
ZOO_FILES = sorted(ZOO.rglob("*.py"))


def package(axis: str):
    return importlib.import_module(f"wamforge.model_zoo.{AXES[axis][0]}")


def config_classes(axis: str) -> tuple[type, ...]:
    union = typing.get_args(getattr(package(axis), AXES[axis][1]))[0]  # Annotated[Union[...], Field]
    return typing.get_args(union) or (union,)  # a union of one is that class


def recipe_kinds(name: str) -> dict[str, str]:
    """{axis: kind} a recipe builds (its base resolved, defaults filled in by the model config)."""
    model = ModelConfig.model_validate({**load_recipe(name)["model"], "recipe": name})
    out = {axis: getattr(model, axis).kind for axis in ("substrate", "backbone", "coupling", "regime")}
    if getattr(model.coupling, "head", None) is not None:
        out["head"] = model.coupling.head.kind
    return out


@pytest.mark.parametrize("axis", AXES)
def test_every_kind_has_exactly_one_config_class_and_lives_in_its_axis_folder(axis):
    folder = ZOO / AXES[axis][0]
    classes = config_classes(axis)
    defaults = Counter(cls.model_fields["kind"].default for cls in classes)
    registry = package(axis).REGISTRY
    assert {kind: defaults[kind] for kind in registry} == {kind: 1 for kind in registry}
    assert set(defaults) == set(registry)  # no config class without a component
    for kind, implementation in registry.items():
        config = next(cls for cls in classes if cls.model_fields["kind"].default == kind)
        for obj in (implementation, config):
            assert Path(inspect.getfile(obj)).is_relative_to(folder), f"{axis} '{kind}': {obj} is outside {folder}"


@pytest.mark.parametrize("axis", RECIPE_AXES)
def test_every_kind_is_built_by_a_recipe_or_allowed_as_contract_only(axis):
    used = {recipe_kinds(name).get(axis) for name in recipe_names()}
    registered = set(package(axis).REGISTRY)
    allowed = CONTRACT_ONLY.get(axis, set())
    assert registered - used - allowed == set()
    assert allowed <= registered - used  # the allow-list names no kind a recipe builds, nor a stale one


def imported_modules(path: Path, source: str | None = None) -> list[str]:
    """Every module a file (or `source` as if it were that file) imports: relative imports resolved,
    importlib.import_module("...") included."""
    parts = list(path.relative_to(ZOO.parents[1]).with_suffix("").parts)
    here = parts if parts[-1] == "__init__" else parts[:-1]
    here = [p for p in here if p != "__init__"]
    found = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            found += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level + 1] if node.level else []
            module = ".".join([*base, *(node.module or "").split(".")]).strip(".")
            found += [module, *(f"{module}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) in (
                "import_module", "__import__") and node.args and isinstance(node.args[0], ast.Constant):
            found.append(str(node.args[0].value))
    return found


def forbidden(module: str) -> bool:
    return ".".join(module.split(".")[:2]) in FORBIDDEN


def test_the_import_scan_catches_absolute_relative_and_dynamic_imports():
    source = ("import wamforge.training.export\nfrom ...launchers import slurm\nfrom .. import trunks\n"
              "importlib.import_module('wamforge.evaluation.report')\n")
    found = imported_modules(ZOO / "couplings" / "base.py", source)
    assert [m for m in found if forbidden(m)] == ["wamforge.training.export", "wamforge.launchers",
                                                  "wamforge.launchers.slurm", "wamforge.evaluation.report"]
    assert "wamforge.model_zoo.trunks" in found


def test_the_model_zoo_imports_nothing_from_training_evaluation_or_launchers():
    offenders = {f"{path.relative_to(ZOO)}: {module}" for path in ZOO_FILES for module in imported_modules(path)
                 if forbidden(module)}
    assert offenders == set()


def test_no_model_zoo_module_exceeds_400_lines():
    lengths = {str(path.relative_to(ZOO)): len(path.read_text().splitlines()) for path in ZOO_FILES}
    assert lengths  # the scan found the zoo
    assert {name: n for name, n in lengths.items() if n > MAX_LINES} == {}


def test_every_recipe_builds_its_census_row():
    rows = recipe_rows()
    assert [row["name"] for row in rows] == recipe_names()
    assert {row["name"]: row["design"] for row in rows} == {row["name"]: row["census_design"] for row in rows}


def test_wamforge_recipes_and_census_run(capsys):
    from wamforge.cli import main

    assert main(["recipes"]) == 0
    listed = capsys.readouterr().out
    assert all(name in listed for name in recipe_names())
    assert main(["census"]) == 0
    assert "44 census 4-tuples" in capsys.readouterr().out
