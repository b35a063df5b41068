"""The packaged census: its counts, its bytes (the survey's own file), and the query helpers."""
from __future__ import annotations

import hashlib
import importlib.resources
import re

import pytest
from rich.console import Console

from wamforge.model_zoo.census import census_table, designs, find, load_census, recipes_table

PACKAGED = importlib.resources.files("wamforge") / "recipes" / "census.tsv"


def render(table) -> str:
    console = Console(record=True, width=200)
    console.print(table)
    return console.export_text()


def test_packaged_census_has_109_systems_in_44_distinct_designs():
    rows = load_census()
    assert len(rows) == 109
    assert len({row.wam for row in rows}) == 109
    grouped = designs(rows)
    assert len(grouped) == 44
    assert sum(len(systems) for systems in grouped.values()) == 109
    # first-seen order: the file's first row opens the first design
    first = ("Pixel (decoded)", "Diffusion", "Post-prediction head", "Open-loop")
    assert next(iter(grouped)) == rows[0].design == first


# sha256 of the survey's census (Tables 1 and 2) as published with it: the packaged copy must be that file
SURVEY_CENSUS_SHA256 = "d894ffe9f6489c7288ff4dad21eb28399c8ba466202bf2538918b1cc641acf71"


def test_packaged_census_is_a_byte_identical_copy_of_the_surveys():
    assert hashlib.sha256(PACKAGED.read_bytes()).hexdigest() == SURVEY_CENSUS_SHA256


def test_find_forgives_case_spaces_hyphens_and_underscores():
    rows = load_census()
    assert find(rows, "mimic_video").wam == "mimic-video"
    assert find(rows, "genie_envisioner").wam == "Genie Envisioner"
    assert find(rows, "cosmos_policy").wam == "CosmosPolicy"
    assert find(rows, "MIMIC VIDEO").design == ("Feature (tap)", "Diffusion", "Post-prediction head", "Chunked")


def test_find_names_a_close_match_for_a_misspelled_system():
    with pytest.raises(KeyError, match="close matches: mimic-video"):
        find(load_census(), "mimic_vido")


def test_a_row_with_a_missing_field_raises_naming_the_file_and_line(tmp_path):
    bad = tmp_path / "census.tsv"
    header = "wam\tdate\tphilosophy\tsubstrate\tbackbone\tcoupling\tdeployment"
    good = "UniPi\t2023.02\tRender-and-Decode\tPixel (decoded)\tDiffusion\tPost-prediction head\tOpen-loop"
    bad.write_text(f"# a comment\n{header}\n{good}\nAVDC\t2023.10\tRender-and-Decode\tPixel (decoded)\tDiffusion\n")
    with pytest.raises(ValueError, match=re.escape(f"{bad} line 4: expected 7 tab-separated fields, found 5")):
        load_census(bad)


def test_census_table_marks_a_design_constructible_when_a_recipe_builds_it():
    rows = load_census()
    mimic = find(rows, "mimic-video")
    text = render(census_table(rows, {mimic.design: ["mimic_video", "genie_envisioner"]}))
    assert "44 census 4-tuples, 1 constructible" in text
    line = next(line for line in text.splitlines() if "mimic-video" in line)
    assert "yes (mimic_video, genie_envisioner)" in line
    assert text.count("yes (") == 1
    assert render(census_table(rows, {})).count(" no ") == 44


def test_recipes_table_names_the_first_axis_that_differs_from_the_census():
    mimic = find(load_census(), "mimic-video")
    built = (mimic.substrate, mimic.backbone, "Joint generation", "Single-step")
    text = render(recipes_table([
        {"name": "mimic_video", "paper": mimic.wam, "philosophy": mimic.philosophy, "design": built,
         "census_design": mimic.design},
        {"name": "faithful", "paper": mimic.wam, "philosophy": mimic.philosophy, "design": mimic.design,
         "census_design": mimic.design},
    ]))
    assert "no: coupling is Joint generation, census says Post-prediction head" in text
    faithful = next(line for line in text.splitlines() if "faithful" in line)
    assert faithful.rstrip(" │").endswith("yes")
