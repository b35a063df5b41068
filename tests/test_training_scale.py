"""Training at scale on 2 CPU ranks over gloo: ZeRO-1/2/3 agree (with LoRA, sharded EMA and their
own parameter groups), Ulysses sequence parallelism matches one rank, a user's DeepSpeed JSON is
checked, accelerate launches the same trainer, a hung rank is named, an interrupted checkpoint
write leaves `latest` loadable."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from tests.conftest import REPO, tiny_config
from tests.runs import one_stage_config, wait_for, wamforge
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.model_zoo.build import build_model
from wamforge.training.engine import lr_lambda
from wamforge.training.metrics import read_jsonl
from wamforge.training.stages import load_initial_weights

LORA_STAGE = {
    "steps": 4, "trainable": ["trunk.proj_out.*", "text_encoder.*"],
    "lora": {"rank": 4, "alpha": 8.0, "targets": ["trunk.blocks.*.attn1.to_q", "trunk.blocks.*.attn1.to_v"]},
    "param_groups": [{"params": ["trunk.proj_out.*"], "lr": 3e-3}],
}


def initial_weights(cfg) -> dict[str, torch.Tensor]:
    """What every rank builds before training (the trainer seeds with cfg.seed)."""
    torch.manual_seed(cfg.seed)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    return build_model(cfg, len(registry)).state_dict()


@pytest.fixture(scope="module")
def zero_runs(built, tmp_path_factory):
    """The same LoRA stage under ZeRO-1 (with a DeepSpeed JSON of the user's), ZeRO-2 (optimizer
    states offloaded to the CPU) and ZeRO-3 (killed after its first checkpoint and resumed)."""
    runs = {}
    user_json = REPO / "configs" / "deepspeed" / "overlap_comm.json"
    for zero, extra in ((1, {"deepspeed_config": str(user_json)}), (2, {"offload_optimizer": True}), (3, {})):
        root = tmp_path_factory.mktemp(f"zero{zero}")
        path, cfg = one_stage_config(root, built[0], stage=LORA_STAGE, zero_stage=zero, ema_decay=0.5,
                                     checkpoint_every=2, **extra)
        if zero == 3:
            proc = wamforge("train", path, start_new_session=True)
            wait_for(RunPaths.of(cfg).checkpoints("pretrain_video") / "step-2" / "trainer_state.json", proc)
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
            assert (RunPaths.of(cfg).checkpoints("pretrain_video") / "step-2" / "ema.safetensors").exists()
            assert not RunPaths.of(cfg).final_weights("pretrain_video").exists()
            args = ("--resume",)
        else:
            args = ()
        proc = wamforge("train", path, *args, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        runs[zero] = cfg
    return runs


def final(cfg, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(str(RunPaths.of(cfg).final_weights("pretrain_video").with_name(name)))


def test_zero_stages_1_2_3_train_the_same_weights_and_ema(zero_runs):
    reference, reference_ema = final(zero_runs[1]), final(zero_runs[1], "ema.safetensors")
    for zero in (2, 3):
        weights, ema = final(zero_runs[zero]), final(zero_runs[zero], "ema.safetensors")
        assert set(weights) == set(reference) and set(ema) == set(reference)
        for key in reference:
            torch.testing.assert_close(weights[key], reference[key], atol=2e-5, rtol=1e-4, msg=f"ZeRO-{zero} {key}")
            torch.testing.assert_close(ema[key], reference_ema[key], atol=2e-5, rtol=1e-4, msg=f"ZeRO-{zero} EMA {key}")
        # the EMA lags the weights it averages (decay 0.5 over 4 steps)
        assert any(not torch.allclose(ema[k], weights[k]) for k in weights if "proj_out" in k)


@pytest.mark.parametrize("zero", [2, 3])  # ZeRO-3 builds the model partitioned: frozen weights must match it too
def test_lora_trains_adapters_only_and_is_merged_into_the_final_weights(zero_runs, zero):
    cfg = zero_runs[zero]
    start, weights = initial_weights(cfg), final(cfg)
    adapters = final(cfg, "lora.safetensors")
    assert not any("lora_" in k for k in weights)  # merged: the plain model's keys
    assert sorted(adapters) == sorted(f"trunk.blocks.{b}.attn1.{p}.lora_{m}" for b in range(2)
                                      for p in ("to_q", "to_v") for m in "AB")
    scale = LORA_STAGE["lora"]["alpha"] / LORA_STAGE["lora"]["rank"]
    for block in range(2):
        for proj in ("to_q", "to_v"):
            prefix = f"trunk.blocks.{block}.attn1.{proj}."
            delta = scale * adapters[prefix + "lora_B"] @ adapters[prefix + "lora_A"]
            assert delta.abs().max() > 0  # B left zero: the adapter trained
            torch.testing.assert_close(weights[prefix + "weight"], start[prefix + "weight"] + delta)
    frozen = [k for k in weights if k.startswith("trunk.blocks.") and ".attn1.to_q." not in k and ".attn1.to_v." not in k]
    assert frozen and all(torch.equal(weights[k], start[k]) for k in frozen)
    assert not torch.equal(weights["trunk.proj_out.weight"], start["trunk.proj_out.weight"])


def test_a_parameter_group_trains_at_its_own_learning_rate(zero_runs):
    cfg = zero_runs[2]
    stage = cfg.stages[0]
    rows = read_jsonl(RunPaths.of(cfg).stage(stage.name) / "metrics.jsonl")
    factor = lr_lambda(stage)
    # the logged lr is the first group's: proj_out's 3e-3, on the stage's schedule
    assert [r["lr"] for r in rows] == pytest.approx([3e-3 * factor(r["step"]) for r in rows])


def test_deepspeed_json_merge_and_conflicts():
    from wamforge.training.engine import merge_user_config

    generated = {"train_batch_size": 8, "train_micro_batch_size_per_gpu": 2, "gradient_accumulation_steps": 2,
                 "zero_optimization": {"stage": 2}, "bf16": {"enabled": False}, "gradient_clipping": 1.0}
    merged = merge_user_config(generated, {"zero_optimization": {"overlap_comm": True}, "train_batch_size": 8})
    assert merged["zero_optimization"] == {"stage": 2, "overlap_comm": True}
    with pytest.raises(ValueError, match=r"zero_optimization.stage = 3 but the experiment implies 2"):
        merge_user_config(generated, {"zero_optimization": {"stage": 3}})
    with pytest.raises(ValueError, match="'optimizer'"):
        merge_user_config(generated, {"optimizer": {"type": "Adam"}})


def test_a_contradicting_deepspeed_json_stops_before_launch(built, tmp_path):
    user_json = tmp_path / "deepspeed.json"
    user_json.write_text(json.dumps({"train_batch_size": 64}))
    path, _ = one_stage_config(tmp_path, built[0], deepspeed_config=str(user_json))
    proc = wamforge("train", path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode != 0
    assert "train_batch_size = 64 but the experiment implies 4" in " ".join(out.split()) and "Traceback" not in out


def test_init_keys_map_a_checkpoint_and_report_what_loaded(built, tmp_path):
    cfg = validate({**json.loads(json.dumps(built[0].model_dump(mode="json"))), "run_dir": str(tmp_path)})
    state = initial_weights(cfg)
    saved = {f"model.{k}": v + 1 for k, v in state.items() if not k.startswith("action_expert.")}
    saved["model.extra.bias"] = torch.zeros(3)
    save_file(saved, str(tmp_path / "other.safetensors"))
    stage = cfg.stages[0].model_copy(update={"init_from": str(tmp_path / "other.safetensors"),
                                             "init_keys": {r"^model\.": ""}, "init_strict": False})
    torch.manual_seed(1)
    model = build_model(cfg, len(EmbodimentRegistry.from_yaml(cfg.embodiments)))
    report = load_initial_weights(model, stage, cfg, RunPaths.of(cfg))
    assert report.dropped == ["extra.bias"] and report.new == sorted(k for k in state if k.startswith("action_expert."))
    assert len(report.loaded) == len(saved) - 1 and len(report.renamed) == len(saved)
    torch.testing.assert_close(model.state_dict()["trunk.proj_out.bias"], state["trunk.proj_out.bias"] + 1)
    assert "1 dropped: extra.bias" in str(report)
    strict = stage.model_copy(update={"init_strict": True})
    with pytest.raises(ValueError, match="init_strict: false"):
        load_initial_weights(model, strict, cfg, RunPaths.of(cfg))


def _sequence_parallel_rank(rank: int, port: int, out: dict) -> None:
    import deepspeed

    from wamforge.training.parallel.sequence_parallel import SequenceShard
    from wamforge.model_zoo.trunks.wan.model import WanDiT

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu")
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False, verbose=False, rank=rank, world_size=2)
    torch.manual_seed(0)
    trunk = WanDiT(12, 32, 2, 4, 64, text_dim=16)
    torch.nn.init.normal_(trunk.proj_out.weight, std=0.02)  # Wan zeroes it: no gradient would reach the blocks
    latents, text = torch.randn(2, 12, 3, 4, 8), torch.randn(2, 5, 16)
    timestep = torch.rand(2, 3 * 2 * 4) * 1000  # per token

    def run():
        trunk.zero_grad()
        prediction, tapped = trunk(latents, timestep, text, tap_layer=1)
        (prediction.square().mean() + tapped.square().mean()).backward()
        return prediction.detach(), tapped.detach(), {n: p.grad.clone() for n, p in trunk.named_parameters()}

    single = run()
    trunk.shard_sequence(SequenceShard(torch.distributed.new_group([0, 1])))
    sharded = run()
    for n in single[2]:  # each rank's share of the gradient; their sum is the whole
        torch.distributed.all_reduce(sharded[2][n])
    for name, a, b in (("prediction", single[0], sharded[0]), ("tap", single[1], sharded[1])):
        torch.testing.assert_close(b, a, atol=1e-5, rtol=1e-4, msg=name)
    for n in single[2]:
        torch.testing.assert_close(sharded[2][n] / 2, single[2][n], atol=1e-5, rtol=1e-4, msg=n)
    out[rank] = True


def test_ulysses_sequence_parallel_trunk_matches_one_rank():
    """Tokens split over 2 ranks, heads all-to-all'd in attention: same prediction, tap and gradients."""
    import torch.multiprocessing as mp

    from wamforge.launchers.local import free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_sequence_parallel_rank, args=(free_port(), out), nprocs=2, join=True)
        assert dict(out) == {0: True, 1: True}


UWM_TINY = {"recipe": "uwm", "trunk": {"kind": "wan", "dim": 32, "layers": 2, "heads": 2, "ffn_dim": 64},
            "regime": {"kind": "chunked", "horizon": 4}, "coupling": {"kind": "joint_generation", "registers": 2},
            "text": {"dim": 32, "max_tokens": 16}}


def _partitioned_build_rank(rank: int, port: int, root: str, model: dict | None, out: dict) -> None:
    import deepspeed

    from wamforge.model_zoo.common.partitions import whole
    from wamforge.training.engine import partitioned_init

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), DS_ACCELERATOR="cpu", LOCAL_RANK=str(rank))
    deepspeed.init_distributed("gloo", auto_mpi_discovery=False, verbose=False, rank=rank, world_size=2)
    raw = tiny_config(Path(root))
    raw["model"] = model or raw["model"]
    raw["training"]["zero_stage"] = 3
    raw["stages"][1]["init_from"] = str(Path(root) / "shifted.safetensors")
    cfg = validate(raw)
    embodiments = len(EmbodimentRegistry.from_yaml(cfg.embodiments))
    torch.manual_seed(cfg.seed)
    plain = build_model(cfg, embodiments).state_dict()
    torch.manual_seed(cfg.seed)
    model = build_model(cfg, embodiments, partitioned=partitioned_init(cfg.training, 2))
    params = dict(model.named_parameters())
    units = tuple(f"{unit}." for unit in model.capabilities.partition_units)  # what grows with the trunk

    def assert_holds(expected: dict[str, torch.Tensor]) -> None:
        for name, param in params.items():
            if name.startswith(units):  # this rank's share only, until gathered
                assert param.numel() == 0 and 0 < param.ds_tensor.numel() <= -(-param.ds_numel // 2), name
            with whole([param]):
                assert torch.equal(param.data, expected[name]), name

    assert_holds(plain)  # the same initial weights as a model built whole
    if rank == 0:
        save_file({k: v + 1 for k, v in plain.items()}, raw["stages"][1]["init_from"])
    torch.distributed.barrier()
    report = load_initial_weights(model, cfg.stages[1], cfg, RunPaths.of(cfg))
    assert not report.new and not report.dropped
    assert_holds({k: v + 1 for k, v in plain.items()})  # init_from loads into the partitions
    out[rank] = True


@pytest.mark.parametrize("model", [None, UWM_TINY], ids=["post_prediction_head", "uwm"])
def test_zero3_builds_the_trunk_partitioned_with_the_same_weights(tmp_path, model):
    """Under ZeRO-3 each rank allocates only its share of what the model declares grows with the
    trunk (the trunk, and a post-prediction head's expert) as it is built; gathered, the weights are
    those of a model built whole, and init_from loads into them."""
    import torch.multiprocessing as mp

    from wamforge.launchers.local import free_port

    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_partitioned_build_rank, args=(free_port(), str(tmp_path), model, out), nprocs=2, join=True)
        assert dict(out) == {0: True, 1: True}


def test_a_joint_generation_recipe_trains_under_zero3_on_two_ranks(built, tmp_path):
    path, cfg = one_stage_config(tmp_path, built[0], stage={"steps": 2, "objective": "joint",
                                                            "mixture": {"weights": {"sim": 1.0, "web": 1.0}}},
                                 zero_stage=3, loader_workers=0)
    raw = yaml.safe_load(path.read_text())
    raw["model"] = UWM_TINY
    path.write_text(yaml.safe_dump(raw))
    proc = wamforge("train", path, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    rows = read_jsonl(RunPaths.of(cfg).stage(cfg.stages[0].name) / "metrics.jsonl")
    assert len(rows) == 2 and all(np.isfinite(r["video_loss"]) and r["action_loss"] > 0 for r in rows)
    with safe_open(str(RunPaths.of(cfg).final_weights(cfg.stages[0].name)), "pt") as f:
        assert {"streams.registers", "trunk.patch_embedding.weight"} <= set(f.keys())


def test_sequence_parallel_training_matches_single_rank_training(built, tmp_path):
    stage = {"steps": 3, "objective": "joint", "mixture": {"weights": {"sim": 1.0}}}
    runs = {}
    for name, settings in (("single", {"world_size": 1}), ("ulysses", {"world_size": 2, "sequence_parallel": 2})):
        path, cfg = one_stage_config(tmp_path / name, built[0], stage=stage, loader_workers=0, **settings)
        proc = wamforge("train", path, stderr=subprocess.PIPE, text=True)
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        runs[name] = cfg
    paths = {name: RunPaths.of(cfg) for name, cfg in runs.items()}
    rows = {name: read_jsonl(p.stage("pretrain_video") / "metrics.jsonl") for name, p in paths.items()}
    # both ranks of the group read the single rank's samples
    single_keys = [r["keys"] for r in read_jsonl(paths["single"].stage("pretrain_video") / "samples.rank0.jsonl")]
    for rank in range(2):
        trace = read_jsonl(paths["ulysses"].stage("pretrain_video") / f"samples.rank{rank}.jsonl")
        assert [r["keys"] for r in trace] == single_keys
    for key in ("loss", "video_loss", "action_loss"):
        assert [r[key] for r in rows["ulysses"]] == pytest.approx([r[key] for r in rows["single"]], rel=1e-4, abs=1e-6)
    assert [r["samples_per_s"] > 0 for r in rows["ulysses"]]
    a = load_file(str(paths["single"].final_weights("pretrain_video")))
    b = load_file(str(paths["ulysses"].final_weights("pretrain_video")))
    for key in a:
        torch.testing.assert_close(b[key], a[key], atol=5e-5, rtol=1e-3, msg=key)


def test_accelerate_launch_runs_the_same_trainer_and_checkpoints(built, tmp_path):
    """`accelerate launch --use_deepspeed --zero_stage 1` = `wamforge train` with zero_stage 1."""
    path, cfg = one_stage_config(tmp_path / "local", built[0], stage={"steps": 3}, zero_stage=1, loader_workers=0)
    assert wamforge("train", path).wait(timeout=600) == 0
    shutil.copy(path, tmp_path / "accelerate.yaml")
    raw = (tmp_path / "accelerate.yaml").read_text().replace(str(tmp_path / "local"), str(tmp_path / "accel"))
    raw = raw.replace("zero_stage: 1", "zero_stage: 2")  # accelerate's --zero_stage must win
    (tmp_path / "accelerate.yaml").write_text(raw)
    accelerate = Path(sys.executable).with_name("accelerate")
    proc = subprocess.run([str(accelerate), "launch", "--num_processes", "2", "--num_machines", "1",
                           "--use_deepspeed", "--zero_stage", "1", "--mixed_precision", "no",
                           "--main_process_port", str(_free_port()), "-m", "wamforge.training.worker",
                           str(tmp_path / "accelerate.yaml")], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "'zero_stage': 1" in proc.stderr
    local, accel = RunPaths.of(cfg), Path(tmp_path / "accel" / "runs" / cfg.name)
    for rank in range(2):
        a = read_jsonl(local.stage("pretrain_video") / f"samples.rank{rank}.jsonl")
        b = read_jsonl(accel / "pretrain_video" / f"samples.rank{rank}.jsonl")
        assert [r["keys"] for r in a] == [r["keys"] for r in b]
    ours = load_file(str(local.final_weights("pretrain_video")))
    theirs = load_file(str(accel / "pretrain_video" / "final" / "model.safetensors"))
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert sorted(p.name for p in (accel / "pretrain_video" / "checkpoints").iterdir()) == \
        sorted(p.name for p in local.checkpoints("pretrain_video").iterdir())


def _free_port() -> int:
    from wamforge.launchers.local import free_port

    return free_port()


def test_a_hung_rank_is_named_when_the_collective_times_out(built, tmp_path):
    path, _ = one_stage_config(tmp_path, built[0], collective_timeout_s=10, loader_workers=0)
    env = {**os.environ, "WAMFORGE_INJECT_HANG": "1@3"}
    proc = wamforge("train", path, env=env, stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=300)
    assert proc.returncode not in (0, None)
    text = " ".join(err.split())
    assert "rank 0 waited 10 s in a collective at step 3; behind it: rank 1 (last reached step 2)" in text, text[-3000:]


def test_an_interrupted_checkpoint_write_leaves_latest_loadable(built, tmp_path):
    path, cfg = one_stage_config(tmp_path, built[0], checkpoint_every=2, loader_workers=0)
    ckpts = RunPaths.of(cfg).checkpoints("pretrain_video")
    env = {**os.environ, "WAMFORGE_INJECT_CHECKPOINT_CRASH": "4"}  # dies with step-4 half written
    assert wamforge("train", path, env=env).wait(timeout=600) != 0
    assert (ckpts / "latest").read_text() == "step-2"
    assert (ckpts / "step-4").exists() and not (ckpts / "step-4" / "trainer_state.json").exists()
    proc = wamforge("train", path, "--resume", stderr=subprocess.PIPE, text=True)
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 0, err[-3000:]
    rows = read_jsonl(RunPaths.of(cfg).stage("pretrain_video") / "metrics.jsonl")
    assert [r["step"] for r in rows] == list(range(1, 7)) and (ckpts / "latest").read_text() == "step-6"
