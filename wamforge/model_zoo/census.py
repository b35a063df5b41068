"""The survey's census of World Action Models, shipped as package data, and helpers to query it.

"World Action Models: A Survey" places every WAM at a 4-tuple of design choices
(predictive substrate, backbone, action coupling, deployment regime). The census lives in
``wamforge/recipes/census.tsv`` (one '#' comment line, a header, one row per system) so that an
installed wamforge can print it and compare its recipes against it.

    rows = load_census()
    designs(rows)             # {(substrate, backbone, coupling, deployment): [CensusRow, ...]}
    find(rows, "mimic_video")  # -> CensusRow(wam="mimic-video", ...)

Baselines (``model_zoo/baselines/``) are not WAMs: they predict no future, so they have no census row
and no 4-tuple. ``find`` answers a registered baseline's name with a ``BaselineRow``, whose design is a
``BaselineDesign`` naming the baseline, and ``recipes_table`` lists such a recipe as a baseline.
"""
from __future__ import annotations

import csv
import difflib
import importlib.resources
from dataclasses import dataclass, fields
from pathlib import Path

from rich.table import Table

AXES = ("substrate", "backbone", "coupling", "deployment")

Design = tuple[str, str, str, str]


@dataclass(frozen=True)
class CensusRow:
    """One system of the census; every field is the string exactly as written in the TSV."""

    wam: str
    date: str
    philosophy: str
    substrate: str
    backbone: str
    coupling: str
    deployment: str

    @property
    def design(self) -> Design:
        """The system's 4-tuple (substrate, backbone, coupling, deployment)."""
        return (self.substrate, self.backbone, self.coupling, self.deployment)


COLUMNS = tuple(f.name for f in fields(CensusRow))
BASELINE = "Baseline"  # the philosophy a baseline is listed under: not one of the survey's three


class BaselineDesign(tuple):
    """The design of a baseline: no point of the survey's design space, since a policy that predicts
    no future has no substrate, backbone, coupling or regime. Each of its four entries says so and
    names the baseline, so code that reads a design as four strings (the exported model card, a
    census lookup) still reads it, and two baselines' designs differ; `recipes_table` shows none."""

    def __new__(cls, name: str):
        design = super().__new__(cls, (f"none ({name} is a baseline, not a WAM)",) * len(AXES))
        design.name = name
        return design

    def __getnewargs__(self):  # copies and pickles rebuild it from its name
        return (self.name,)

    def __repr__(self) -> str:
        return f"BaselineDesign({self.name!r})"


@dataclass(frozen=True)
class BaselineRow:
    """What ``find`` answers for a baseline's name: no census system, so no date and no 4-tuple."""

    wam: str
    philosophy: str = BASELINE

    @property
    def design(self) -> BaselineDesign:
        return BaselineDesign(self.wam)


def load_census(path: Path | None = None) -> list[CensusRow]:
    """Read the census TSV (the packaged copy unless ``path`` is given) into rows, in file order.

    Lines starting with '#' and blank lines are skipped; the first remaining line must be the header.
    """
    source = Path(path) if path is not None else importlib.resources.files("wamforge") / "recipes" / "census.tsv"
    # Keep each line's number beside it so an error can point at the line a person would open.
    numbered = [
        (number, line)
        for number, line in enumerate(source.read_text(encoding="utf-8").splitlines(), start=1)
        if line.strip() and not line.startswith("#")
    ]
    if not numbered:
        raise ValueError(f"{source} holds no header and no rows.")
    # QUOTE_NONE: the census is plain TSV, so a quote character is text and one line is one record.
    records = csv.reader((line for _, line in numbered), delimiter="\t", quoting=csv.QUOTE_NONE)
    header = next(records)
    if tuple(header) != COLUMNS:
        raise ValueError(f"{source} line {numbered[0][0]}: expected the header {'|'.join(COLUMNS)}, "
                         f"found {'|'.join(header)}.")
    rows = []
    for (number, _), record in zip(numbered[1:], records):
        if len(record) != len(COLUMNS):
            raise ValueError(f"{source} line {number}: expected {len(COLUMNS)} tab-separated fields, "
                             f"found {len(record)}.")
        rows.append(CensusRow(*record))
    return rows


def designs(rows: list[CensusRow]) -> dict[Design, list[CensusRow]]:
    """The distinct 4-tuples in first-seen order, each with the systems that share it."""
    grouped: dict[Design, list[CensusRow]] = {}
    for row in rows:
        grouped.setdefault(row.design, []).append(row)
    return grouped


def _key(name: str) -> str:
    # The census spells names as their papers do ("mimic-video", "Genie Envisioner", "CosmosPolicy");
    # people type them as identifiers, so compare without case, spaces, hyphens or underscores.
    return "".join(ch for ch in name.lower() if ch not in " -_")


def _baselines() -> dict[str, str]:
    """{key: label} of the registered baselines (imported only when a name is not a census system)."""
    from wamforge.model_zoo.baselines import REGISTRY

    return {_key(kind): cls.label for kind, cls in REGISTRY.items()} | {_key(cls.label): cls.label
                                                                       for cls in REGISTRY.values()}


def find(rows: list[CensusRow], wam: str) -> CensusRow | BaselineRow:
    """The row of system ``wam``, forgiving case, spaces, hyphens and underscores; a registered
    baseline's name (its label or kind) gives its ``BaselineRow``; KeyError if neither."""
    by_key = {_key(row.wam): row for row in rows}
    if _key(wam) in by_key:
        return by_key[_key(wam)]
    baseline = _baselines().get(_key(wam))
    if baseline is not None:
        return BaselineRow(baseline)
    close = difflib.get_close_matches(_key(wam), list(by_key), n=3, cutoff=0.6)
    hint = f"; close matches: {', '.join(by_key[k].wam for k in close)}" if close else ""
    raise KeyError(f"{wam!r} is not a system of the census{hint}.")


def _names(systems: list[CensusRow], shown: int = 5) -> str:
    # A few tuples hold a dozen systems or more; list the first few so a row stays one line wide.
    names = [row.wam for row in systems]
    if len(names) <= shown:
        return ", ".join(names)
    return ", ".join(names[:shown]) + f", ... (+{len(names) - shown} more)"


def census_table(rows: list[CensusRow], constructible: dict[tuple, list[str]]) -> Table:
    """One row per distinct census 4-tuple, with its systems and the recipes (if any) that build it.

    ``constructible`` maps a 4-tuple to the names of the recipes whose model has that design;
    tuples absent from the census are ignored here.
    """
    grouped = designs(rows)
    built = sum(1 for design in grouped if constructible.get(design))
    table = Table(title=f"{len(grouped)} census 4-tuples, {built} constructible")
    for axis in AXES:
        table.add_column(axis, no_wrap=True)
    table.add_column("systems", justify="right", no_wrap=True)
    table.add_column("names")  # the one column allowed to wrap
    table.add_column("constructible", no_wrap=True)
    for design, systems in grouped.items():
        recipes = constructible.get(design)
        verdict = f"yes ({', '.join(recipes)})" if recipes else "no"
        table.add_row(*design, str(len(systems)), _names(systems), verdict)
    return table


def _match(design: tuple, census_design: tuple) -> str:
    for axis, built, surveyed in zip(AXES, design, census_design):
        if built != surveyed:
            return f"no: {axis} is {built}, census says {surveyed}"
    return "yes"


def recipes_table(recipes: list[dict]) -> Table:
    """One row per recipe: what its model builds, and whether that agrees with its paper's census row.

    Each dict has keys name, paper, philosophy, design (the 4-tuple the recipe's model builds) and
    census_design (the 4-tuple of the paper's census row). A baseline's design is a ``BaselineDesign``:
    its row leaves the four axes empty, since it has none, and says it has no census row.
    """
    baselines = sum(isinstance(recipe["design"], BaselineDesign) for recipe in recipes)
    title = f"{len(recipes)} recipe{'' if len(recipes) == 1 else 's'}"
    table = Table(title=title + (f" ({baselines} baseline{'' if baselines == 1 else 's'})" if baselines else ""))
    table.add_column("name", no_wrap=True)
    table.add_column("paper", max_width=40)  # titles wrap: the 4-tuple is what must fit
    for column in ("philosophy", *AXES):
        table.add_column(column, no_wrap=True)
    table.add_column("matches census", min_width=7)  # may wrap: a mismatch sentence can be long
    for recipe in recipes:
        if isinstance(recipe["design"], BaselineDesign):
            table.add_row(recipe["name"], recipe["paper"], recipe["philosophy"], *[""] * len(AXES),
                          "baseline: no census row")
            continue
        table.add_row(recipe["name"], recipe["paper"], recipe["philosophy"], *recipe["design"],
                      _match(tuple(recipe["design"]), tuple(recipe["census_design"])))
    return table
