import itertools
import json
import os
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
import torch
import webdataset as wds

from wamforge.config.paths import RunPaths
from wamforge.config.stages import MixtureConfig, StageConfig
from wamforge.data_pipeline.loader import MixtureLoader
from wamforge.data_pipeline.loader.collate import Collator, Normalizer
from wamforge.data_pipeline.loader.mixture import draw_sources, weights_at
from wamforge.data_pipeline.loader.shard_stream import ShardStream, as_json
from wamforge.data_pipeline.embodiments import EmbodimentRegistry


BUFFER = 20_000  # bytes: a few windows of the tiny build, so the shuffle buffer is exercised


def make_loader(cfg, stage, rank=0, world=1, batch=4, workers=0, buffer=BUFFER):
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    stats = json.loads((RunPaths.of(cfg).data / "stats.json").read_text())
    collator = Collator(Normalizer(stats, registry), registry, {"sim": 0, "web": 1}, horizon=4,
                        max_action_dim=8, max_proprio_dim=8)
    return MixtureLoader(RunPaths.of(cfg).data, stage, collator, rank, world, batch, seed=7, workers=workers,
                         shuffle_buffer_bytes=buffer)


def take(loader, n):
    it = iter(loader)
    return [next(it)[0] for _ in range(n)]


def stage(weights, curriculum=()):
    return StageConfig(name="s", objective="joint", steps=100,
                       mixture={"weights": weights, "curriculum": list(curriculum)})


def test_mixture_draws_match_weights():
    weights = {"a": 0.7, "b": 0.2, "c": 0.1}
    counts = Counter(n for step in range(400) for n in draw_sources(weights, 16, seed=3, step=step, rank=0))
    total = sum(counts.values())
    for name, w in weights.items():
        assert abs(counts[name] / total - w) < 0.02


def test_curriculum_is_piecewise_linear():
    mix = MixtureConfig(weights={"a": 1, "b": 1}, curriculum=[
        {"step": 0, "weights": {"a": 1.0, "b": 0.0}}, {"step": 100, "weights": {"a": 0.0, "b": 1.0}}])
    assert weights_at(mix, 0) == {"a": 1.0}
    mid = weights_at(mix, 25)
    assert mid["a"] == pytest.approx(0.75) and mid["b"] == pytest.approx(0.25)
    assert weights_at(mix, 500) == {"b": 1.0}


def test_realized_proportions_follow_the_stage_weights(built):
    cfg, _ = built
    loader = make_loader(cfg, stage({"sim": 3.0, "web": 1.0}), batch=8)
    batches = take(loader, 40)
    sources = Counter(k.split("/")[0] for b in batches for k in b.keys)
    assert abs(sources["sim"] / sum(sources.values()) - 0.75) < 0.06


def test_action_free_samples_are_masked(built):
    cfg, _ = built
    batch = take(make_loader(cfg, stage({"sim": 1.0, "web": 1.0}), batch=8), 3)[-1]
    assert batch.video.shape[1:] == (9, 1, 3, 32, 32)
    assert batch.video.dtype == torch.uint8  # scaled to [-1, 1] by the model, on its device
    for i, key in enumerate(batch.keys):
        if key.startswith("web/"):
            assert not batch.has_actions[i] and not batch.action_mask[i].any() and not batch.proprio_mask[i].any()
            assert torch.all(batch.actions[i] == 0)
        else:
            assert batch.has_actions[i]
            assert batch.action_mask[i, :, :4].all() and not batch.action_mask[i, :, 4:].any()
            assert batch.proprio_mask[i, :4].all() and not batch.proprio_mask[i, 4:].any()
    # the gripper stays in raw units [-1, 1]; normalized dims are roughly standardized
    sim = batch.has_actions
    assert batch.actions[sim][..., 3].abs().max() <= 1.0


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_read_disjoint_samples(built, workers):
    cfg, _ = built
    keys = [[k for b in take(make_loader(cfg, stage({"sim": 1.0}), rank=r, world=2, workers=workers, buffer=0), 6)
             for k in b.keys] for r in range(2)]
    for rank_keys in keys:  # within an epoch (48 sim windows) no sample comes twice
        assert len(set(rank_keys)) == len(rank_keys)
    assert not set(keys[0]) & set(keys[1])


@pytest.mark.parametrize("workers", [0, 2])
def test_resume_continues_the_exact_sample_sequence(built, workers):
    cfg, _ = built
    st = stage({"sim": 1.0, "web": 1.0})
    whole = [b.keys for b in take(make_loader(cfg, st, workers=workers), 30)]
    first = make_loader(cfg, st, workers=workers)
    part = [b.keys for b in take(first, 11)]
    state = json.loads(json.dumps(first.state_dict()))  # through JSON, as in a checkpoint
    second = make_loader(cfg, st, workers=workers)
    second.load_state_dict([state])
    rest = [b.keys for b in take(second, 19)]
    assert part + rest == whole


def sim_shards(cfg):
    data = RunPaths.of(cfg).data
    manifest = json.loads((data / "manifest.json").read_text())
    return [data / shard for shard in manifest["sources"]["sim"]["shards"]]


def source_keys(cfg):
    return [s["__key__"] for shard in sim_shards(cfg) for s in wds.WebDataset(str(shard), shardshuffle=False)]


def remainder_keys(cfg, lane_state, consumer, consumers):
    """What one new consumer serves before its next pass starts."""
    stream = ShardStream(sim_shards(cfg), consumer, consumers, seed=0)
    stream.load_state_dict(lane_state["streams"]["sim"])
    keys = []
    for _, sample in stream._cursor():
        if stream.state.remainder is None:
            return keys
        keys.append(sample["__key__"])


@pytest.mark.parametrize("world, workers", [(1, 0), (3, 1), (1, 3)])
def test_resume_on_another_layout_serves_the_rest_of_the_pass_once(built, world, workers):
    """2 ranks x 2 shuffling workers stop mid-pass; the new layout serves exactly what they had left."""
    cfg, _ = built
    st = stage({"sim": 1.0})
    old = [make_loader(cfg, st, rank=r, world=2, workers=2) for r in range(2)]
    consumed = [k for loader in old for b in take(loader, 3) for k in b.keys]
    states = json.loads(json.dumps([loader.state_dict() for loader in old]))
    assert len(set(consumed)) == len(consumed)

    lanes = max(1, workers)
    served = []
    for rank in range(world):
        new = make_loader(cfg, st, rank=rank, world=world, workers=workers)
        new.load_state_dict(states)
        assert new.step == 3
        for lane, state in new.lane_states.items():
            served += remainder_keys(cfg, state, rank * lanes + lane, world * lanes)
    assert len(served) == len(set(served))
    assert sorted(served) == sorted(set(source_keys(cfg)) - set(consumed))


def test_resume_on_one_rank_continues_the_loader_end_to_end(built):
    cfg, _ = built
    st = stage({"sim": 1.0})
    old = [make_loader(cfg, st, rank=r, world=2, workers=2) for r in range(2)]
    consumed = [k for loader in old for b in take(loader, 2) for k in b.keys]
    new = make_loader(cfg, st, workers=0, buffer=0)  # no buffer: the remainder comes out first, in order
    new.load_state_dict([loader.state_dict() for loader in old])
    left = set(source_keys(cfg)) - set(consumed)
    served = [k for b in take(new, -(-len(left) // 4)) for k in b.keys][: len(left)]
    assert sorted(served) == sorted(left)


def test_shuffle_buffer_reorders_and_holds_the_rest(built):
    cfg, _ = built
    shards, n = sim_shards(cfg), 12
    plain = ShardStream(shards, 0, 1, seed=3)
    shuffled = ShardStream(shards, 0, 1, seed=3, buffer_bytes=BUFFER)
    served = [s["__key__"] for s in itertools.islice(iter(shuffled), n)]
    buffered = len(shuffled.state_dict()["buffer"])
    read = [s["__key__"] for s in itertools.islice(iter(plain), n + buffered)]
    assert buffered > 0 and served != read[:n]
    assert len(set(served)) == n and set(served) <= set(read)  # the other `buffered` wait in the buffer
    # and the saved buffer (locations, not bytes) restores the exact continuation
    again = ShardStream(shards, 0, 1, seed=3, buffer_bytes=BUFFER)
    again.load_state_dict(json.loads(json.dumps(as_json(shuffled.state_dict()))))
    more = [s["__key__"] for s in itertools.islice(iter(again), 8)]
    reference = ShardStream(shards, 0, 1, seed=3, buffer_bytes=BUFFER)
    assert [s["__key__"] for s in itertools.islice(iter(reference), n + 8)] == served + more


def test_a_stream_resumed_anywhere_continues_exactly_across_passes(built):
    """Snapshots taken mid-drain of the buffer and across pass boundaries restore the same sequence."""
    cfg, _ = built
    shards = sim_shards(cfg)
    reference_stream = ShardStream(shards, 0, 1, seed=3, buffer_bytes=BUFFER)
    reference_iter = iter(reference_stream)
    reference, states = [], []
    for _ in range(130):  # over two passes of the tiny sim source
        states.append(json.loads(json.dumps(as_json(reference_stream.state_dict()))))
        reference.append(next(reference_iter)["__key__"])
    assert states[-1]["epoch"] >= 2
    for k in range(1, 120):
        again = ShardStream(shards, 0, 1, seed=3, buffer_bytes=BUFFER)
        again.load_state_dict(states[k])
        assert [s["__key__"] for s in itertools.islice(iter(again), 10)] == reference[k:k + 10], k


def test_step_curriculum_holds_each_breakpoint():
    mix = MixtureConfig(weights={"a": 1}, interpolation="step", curriculum=[
        {"step": 0, "weights": {"a": 1.0, "b": 0.0}}, {"step": 100, "weights": {"a": 0.0, "b": 1.0}}])
    assert weights_at(mix, 0) == weights_at(mix, 99) == {"a": 1.0}
    assert weights_at(mix, 100) == {"b": 1.0}


def test_quantile_normalization_maps_q01_q99_to_unit_range():
    registry = EmbodimentRegistry.from_yaml("configs/embodiments.yaml")
    stats = {"sawyer": {"actions": {"mean": [0.0] * 4, "std": [1.0] * 4, "q01": [-2.0, 0.0, 1.0, -1.0],
                                    "q99": [2.0, 4.0, 3.0, 1.0]}}}
    norm = Normalizer(stats, registry, "quantile")
    raw = np.array([[-2.0, 0.0, 1.0, 0.5], [2.0, 4.0, 3.0, -0.5]], np.float32)
    out = norm.normalize("sawyer", "actions", raw)
    np.testing.assert_allclose(out[:, :3], [[-1, -1, -1], [1, 1, 1]])
    np.testing.assert_allclose(out[:, 3], raw[:, 3])  # the gripper stays raw
    np.testing.assert_allclose(norm.denormalize("sawyer", "actions", out), raw, atol=1e-6)
    assert Normalizer(stats, registry).stats_hash == norm.stats_hash != Normalizer({}, registry).stats_hash


def test_nested_groups_and_size_balancing():
    mix = MixtureConfig(weights={"web": 1.0, "robot": {"franka": 3.0, "ur5": 1.0}})
    assert weights_at(mix, 0) == pytest.approx({"web": 0.5, "franka": 0.375, "ur5": 0.125})
    heavy = MixtureConfig(weights={"web": 1.0, "robot": {"weight": 3.0, "franka": 1.0, "ur5": 1.0}})
    assert weights_at(heavy, 0) == pytest.approx({"web": 0.25, "franka": 0.375, "ur5": 0.375})
    balanced = MixtureConfig(weights={"a": 1.0, "b": 1.0}, balance="size")
    assert weights_at(balanced, 0, {"a": 300, "b": 100}) == pytest.approx({"a": 0.75, "b": 0.25})
    with pytest.raises(ValueError, match="sample counts"):
        weights_at(balanced, 0)


def test_nested_group_members_are_checked_against_sources(tmp_path):
    from tests.conftest import tiny_config
    from wamforge.config import ConfigError, validate

    raw = tiny_config(tmp_path)
    raw["stages"][0]["mixture"]["weights"] = {"web": 1.0, "robots": {"sim": 1.0, "franka": 1.0}}
    with pytest.raises(ConfigError, match="franka"):
        validate(raw)
    raw["stages"][0]["mixture"]["weights"] = {"web": 1.0, "robots": {"sim": 1.0}}
    assert validate(raw).stages[0].mixture.weights == {"web": 1.0, "sim": 1.0}


def stalled_loader(data: Path, embodiments: str) -> MixtureLoader:
    """A one-worker loader whose only shard is a FIFO nobody writes: a read that never returns,
    like a hung network mount."""
    (data / "shards").mkdir()
    os.mkfifo(data / "shards" / "stuck.tar")
    (data / "manifest.json").write_text(json.dumps({"sources": {"sim": {"shards": ["shards/stuck.tar"],
                                                                        "samples": 10}}}))
    registry = EmbodimentRegistry.from_yaml(embodiments)
    collator = Collator(Normalizer({}, registry), registry, {"sim": 0}, horizon=4, max_action_dim=8,
                        max_proprio_dim=8)
    return MixtureLoader(data, stage({"sim": 1.0}), collator, rank=0, world=1, batch_size=2, seed=0,
                         workers=1, stall_timeout_s=2)


def test_a_stalled_worker_is_named(built, tmp_path):
    cfg, _ = built
    with pytest.raises(RuntimeError, match="loader worker 0 of rank 0 produced no batch for step 0 in 2 s"):
        next(iter(stalled_loader(tmp_path, cfg.embodiments)))


STALLED_PROCESS = """
import sys
from pathlib import Path
from tests.test_loader import stalled_loader

batches = iter(stalled_loader(Path(sys.argv[1]), sys.argv[2]))
try:
    next(batches)
except RuntimeError:
    print("stalled", flush=True)
sys.stdin.readline()  # exits with the stalled worker still referenced
"""


def test_a_worker_ignores_a_schedulers_sigterm_and_never_outlives_its_trainer(built, tmp_path):
    """Workers ignore the SIGTERM a scheduler sends every process of a job, but not their trainer's:
    a stalled worker still referenced at exit is stopped by it, so the process exits."""
    cfg, _ = built
    proc = subprocess.Popen([sys.executable, "-c", STALLED_PROCESS, str(tmp_path), str(cfg.embodiments)],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=Path(__file__).parents[1])
    worker = None
    try:
        assert proc.stdout.readline() == "stalled\n"
        [worker] = psutil.Process(proc.pid).children()
        os.kill(worker.pid, signal.SIGTERM)  # from this process, as a scheduler's would be
        with pytest.raises(psutil.TimeoutExpired):
            worker.wait(timeout=1)
        proc.stdin.write("\n")
        proc.stdin.flush()
        try:
            assert proc.wait(timeout=60) == 0  # a hang guard: before the fix, exit waited forever
        except subprocess.TimeoutExpired:
            pytest.fail("the process did not exit: its stalled loader worker outlived it")
        assert not worker.is_running()
    finally:
        proc.kill()
        if worker and worker.is_running():
            worker.kill()


def test_realized_proportions_follow_a_curriculum(built):
    cfg, _ = built
    curriculum = [{"step": 0, "weights": {"sim": 0.1, "web": 0.9}}, {"step": 40, "weights": {"sim": 0.9, "web": 0.1}}]
    batches = take(make_loader(cfg, stage({"sim": 1.0, "web": 1.0}, curriculum), batch=8, workers=2), 40)

    def sim_share(window):
        keys = [k for b in window for k in b.keys]
        return sum(k.startswith("sim/") for k in keys) / len(keys)

    # the target averages 0.2 over steps 0-9 and 0.8 over steps 30-39
    assert abs(sim_share(batches[:10]) - 0.2) < 0.1
    assert abs(sim_share(batches[30:]) - 0.8) < 0.1


@pytest.mark.parametrize("setting, ranks, cores, expected", [
    ("auto", 2, 2, (1, True)),    # two CPU ranks on two cores: a worker each, on the cycles they leave idle
    ("auto", 1, 2, (1, False)),   # a core left free: the worker has it
    ("auto", 8, 16, (1, False)),  # a GPU node with a core per rank to spare
    ("auto", 8, 96, (8, False)),  # many spare cores: capped
    (3, 1, 2, (3, True)),         # an explicit count is kept, at idle priority where it oversubscribes
    (0, 2, 2, (0, False)),        # decoding in the trainer
])
def test_workers_come_from_the_cores_the_ranks_leave_free(setting, ranks, cores, expected):
    from wamforge.data_pipeline.loader.loader import choose_workers

    assert choose_workers(setting, ranks, threads_per_rank=1, cores=cores) == expected


def _scheduler_after_run_when_idle(queue) -> None:
    from wamforge.data_pipeline.loader.loader import run_when_idle

    run_when_idle()
    queue.put(os.sched_getscheduler(0))


def test_workers_sharing_the_ranks_cores_run_at_idle_priority():
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    worker = context.Process(target=_scheduler_after_run_when_idle, args=(queue,))
    worker.start()
    assert queue.get(timeout=60) == os.SCHED_IDLE and os.sched_getscheduler(0) != os.SCHED_IDLE
    worker.join()


def test_batches_reach_the_device_with_floats_in_the_trainers_precision_and_frames_as_uint8():
    from wamforge.data_pipeline.schema import Batch
    from wamforge.training.device_prefetch import on_device

    batch = Batch(video=torch.zeros(1, 5, 1, 3, 8, 8, dtype=torch.uint8), latents=None,
                  video_pad=torch.zeros(1, 5, dtype=torch.bool), actions=torch.ones(1, 2, 3),
                  action_mask=torch.ones(1, 2, 3, dtype=torch.bool), has_actions=torch.ones(1, dtype=torch.bool),
                  proprio=torch.ones(1, 2), proprio_mask=torch.ones(1, 2, dtype=torch.bool),
                  embodiment_id=torch.zeros(1, dtype=torch.long), source_id=torch.zeros(1, dtype=torch.long),
                  text=["a"], keys=["k"])
    (moved, weights), = list(on_device([(batch, {"web": 1.0})], torch.device("cpu"), torch.bfloat16))
    assert weights == {"web": 1.0} and moved.keys == ["k"] and moved.latents is None
    assert (moved.video.dtype, moved.actions.dtype, moved.embodiment_id.dtype) == (torch.uint8, torch.bfloat16,
                                                                                   torch.long)
    assert len(moved.tensors()) == 9  # every field that holds a tensor (latents, value targets: none here)
