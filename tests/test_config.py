import pytest

from tests.conftest import tiny_config, write_config
from wamforge.cli import main
from wamforge.config import ConfigError, load_config, validate


def test_quickstart_config_is_valid():
    cfg = load_config("configs/experiments/quickstart.yaml")
    assert [s.objective for s in cfg.stages] == ["video", "joint", "action"]
    assert cfg.stages[0].init_from is None and cfg.stages[1].init_from == "previous"


def test_unknown_key_names_file_path_and_nearest(tmp_path):
    raw = tiny_config(tmp_path)
    raw["training"]["micro_batch_per_rnak"] = 3
    path = write_config(raw, tmp_path / "bad.yaml")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and "training.micro_batch_per_rnak" in msg and "micro_batch_per_rank" in msg


def test_bad_value_names_key_path(tmp_path):
    raw = tiny_config(tmp_path)
    raw["stages"][1]["objective"] = "dream"
    with pytest.raises(ConfigError, match=r"stages\.1\.objective"):
        validate(raw, "x.yaml")


def test_clip_frames_must_match_vae_stride(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["clip_frames"] = 8
    with pytest.raises(ConfigError, match="1 \\+ 4k"):
        validate(raw)


def test_mixture_of_unknown_source_is_rejected(tmp_path):
    raw = tiny_config(tmp_path)
    raw["stages"][0]["mixture"]["weights"]["youtube"] = 1.0
    with pytest.raises(ConfigError, match="unknown sources"):
        validate(raw)


def test_set_overrides_nested_and_list_values(tmp_path):
    path = write_config(tiny_config(tmp_path), tmp_path / "c.yaml")
    cfg = load_config(path, ["training.world_size=1", "stages.2.steps=9", "eval.suite.tasks=[a, b]"])
    assert cfg.training.world_size == 1 and cfg.stages[2].steps == 9 and cfg.eval.suite.tasks == ["a", "b"]


@pytest.mark.parametrize("axis, kind", [("coupling", "latent_action"), ("substrate", "geometric.flow"),
                                        ("regime", "asynchronous"), ("trunk", "ltx")])
def test_a_design_point_no_component_builds_is_refused_naming_what_exists(tmp_path, axis, kind):
    from wamforge.model_zoo import couplings, regimes, substrates, trunks

    raw = tiny_config(tmp_path)
    raw["model"][axis] = kind
    with pytest.raises(ConfigError, match=f"model.{axis}.*'{kind}'") as refused:
        validate(raw)
    registry = {"coupling": couplings, "substrate": substrates, "regime": regimes, "trunk": trunks}[axis].REGISTRY
    assert all(f"'{name}'" in str(refused.value) for name in registry)  # the sentence lists what exists


def test_a_recipe_lays_under_the_model_block_and_set_still_overrides(tmp_path):
    raw = tiny_config(tmp_path)
    raw["model"] = {"recipe": "uwm", "trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64}}
    path = write_config(raw, tmp_path / "c.yaml")
    cfg = load_config(path, ["model.coupling.registers=2", "model.regime.horizon=4"])
    assert (cfg.model.coupling.kind, cfg.model.backbone.kind, cfg.model.substrate.kind) == \
        ("joint_generation", "hybrid", "pixel.latent")
    assert cfg.model.coupling.registers == 2 and cfg.model.trunk.dim == 32 and cfg.model.regime.horizon == 4
    raw["model"]["recipe"] = "uvm"
    with pytest.raises(ConfigError, match="no recipe named 'uvm'; known: .*uwm"):
        validate(raw)


def test_a_misspelt_key_of_a_component_names_that_components_fields(tmp_path):
    raw = tiny_config(tmp_path)
    raw["model"]["coupling"] = {"kind": "joint_generation", "registerz": 2}
    with pytest.raises(ConfigError, match="unknown key 'model.coupling.registerz'; did you mean 'registers'"):
        validate(raw)


def test_cli_reports_one_sentence_and_exit_code_2(tmp_path, capsys):
    raw = tiny_config(tmp_path)
    raw["modle"] = {}
    path = write_config(raw, tmp_path / "bad.yaml")
    assert main(["train", str(path)]) == 2
    out = capsys.readouterr().out
    assert "unknown key 'modle'" in out and "did you mean 'model'" in out and "Traceback" not in out


def test_curriculum_plot_cli(tmp_path):
    out = tmp_path / "curricula.png"
    assert main(["curriculum", "plot", "configs/experiments/quickstart.yaml", "--out", str(out)]) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.parametrize("baseline", ["no_future", "diffusion_policy"])
def test_a_baseline_keeps_data_stages_and_steps_and_turns_the_future_off(tmp_path, baseline):
    path = write_config(tiny_config(tmp_path), tmp_path / "c.yaml")
    cfg, base = load_config(path), load_config(path, baseline=baseline)
    assert base.name == f"{cfg.name}-{baseline}" and base.data == cfg.data and base.eval == cfg.eval
    assert [(s.name, s.steps, s.mixture) for s in base.stages] == [(s.name, s.steps, s.mixture) for s in cfg.stages]
    assert all(s.objective == "action" and s.loss_weights["video"] == 0 for s in base.stages)
    if baseline == "no_future":
        assert base.model == cfg.model and base.stages[-1].trainable == cfg.stages[-1].trainable
    else:
        assert base.model.baseline.kind == "diffusion_policy" and all(s.trainable == ["*"] for s in base.stages)


@pytest.mark.parametrize("recipe, change, sentence", [
    ("vlp", {"data": {"frame_stride": 2}}, "one control step apart: set data.frame_stride to 1"),
    ("vlp", {"model": {"regime": {"kind": "chunked", "horizon": 12}}, "data": {"action_frames": 12}},
     "a clip of 9 frames has 8 after the current one"),
    ("cosmos_policy", {"model": {"max_action_dim": 64}, "data": {"resolution": [8, 8]}},
     "tiles H x max_action_dim = 512 action values into one latent frame of 192"),
])
def test_a_component_refuses_data_it_cannot_read_before_launch(recipe, change, sentence, tmp_path):
    raw = tiny_config(tmp_path)
    raw["model"] = {"recipe": recipe, "trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
                    "text": {"dim": 32, "max_tokens": 16}, **change.get("model", {})}
    raw["data"].update(change.get("data", {}))
    raw["eval"]["execute_steps"] = 4
    with pytest.raises(ConfigError, match=sentence):
        validate(raw)
