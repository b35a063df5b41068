"""Windows: past context, multi-rate video vs actions, padding at episode edges, cached latents."""
import json

import numpy as np
import pytest
import torch
import webdataset as wds

from tests.conftest import tiny_config
from wamforge.config import validate
from wamforge.config.paths import RunPaths
from wamforge.config.data import DataConfig
from wamforge.data_pipeline.build.pipeline import build_dataset
from wamforge.data_pipeline.build.shard_writer import clip_windows, window_starts
from wamforge.data_pipeline.loader import MixtureLoader
from wamforge.data_pipeline.loader.collate import Collator, Normalizer, load_npy
from wamforge.data_pipeline.schema import Episode
from wamforge.data_pipeline.video import decode_mp4, untile_views, video_to_tensor
from wamforge.data_pipeline.embodiments import EmbodimentRegistry
from wamforge.model_zoo.vae import encode_views, make_vae
from wamforge.model_zoo.build import build_model
from wamforge.model_zoo.inference import Inference
from wamforge.evaluation.policy import Policy

LENGTH = 30


def data(**changes) -> DataConfig:
    fields = dict(clip_frames=9, clip_stride=4, frame_stride=2, context_frames=4, action_frames=6,
                  resolution=(16, 16))
    return DataConfig(sources={}, **{**fields, **changes})


def episode() -> Episode:
    """Frame i is a flat grey of 8 * i and its action is (i, -i, 0, 1): every row names its frame."""
    frames = np.repeat((8 * np.arange(LENGTH, dtype=np.uint8))[:, None, None, None, None], 16 * 16 * 3, 2)
    frames = frames.reshape(LENGTH, 1, 16, 16, 3)
    t = np.arange(LENGTH, dtype=np.float32)
    return Episode("sim", "ep", "sim", "sawyer", frames, fps=10.0, views=["corner"],
                   actions=np.stack([t, -t, 0 * t, 0 * t + 1], 1), proprio=np.stack([t, t, t, t], 1))


def test_window_starts_cover_the_episode_from_its_first_current_frame_to_its_last_frame():
    starts = window_starts(LENGTH, data())
    # span (9 - 1) * 2 = 16 steps; context 4 frames * 2 = 8 steps before the current frame
    assert starts == [-8, -4, 0, 4, 8, 12, 13]
    assert starts[0] + 8 == 0 and starts[-1] + 16 == LENGTH - 1
    assert window_starts(16, data()) == [-8, -4, -1] and window_starts(8, data()) == []


def test_windows_are_multi_rate_with_padding_at_both_edges():
    windows = list(clip_windows(episode(), data()))
    first, last = (json.loads(w["json"]) for w in (windows[0], windows[-1]))
    assert (first["start"], first["current"], first["video_pad"]) == (-8, 0, 4)
    assert (last["start"], last["current"], last["video_pad"]) == (13, 21, 0)

    grey = decode_mp4(windows[0]["mp4"])[:, 0, 0, 0].astype(int)
    # video every 2nd step; the 4 context frames before the episode repeat its first frame
    np.testing.assert_allclose(grey, 8 * np.maximum(-8 + 2 * np.arange(9), 0), atol=3)
    actions = load_npy(windows[-1]["actions.npy"])
    np.testing.assert_array_equal(actions[:, 0], np.arange(21, 27))  # every step from the current frame

    registry = EmbodimentRegistry.from_yaml("configs/embodiments.yaml")
    collator = Collator(Normalizer({}, registry), registry, {"sim": 0}, horizon=12, max_action_dim=8,
                        max_proprio_dim=8)
    long = list(clip_windows(episode(), data(action_frames=32)))
    batch = collator.collate([collator.decode(w) for w in (long[0], long[-1])])
    assert batch.video_pad[0].tolist() == [True] * 4 + [False] * 5 and not batch.video_pad[1].any()
    # 30 - 21 = 9 real rows, then padding past the episode's end (is_pad)
    assert batch.action_mask[1, :, :4].all(-1).tolist() == [True] * 9 + [False] * 3
    assert not batch.action_mask[1, 9:].any() and torch.all(batch.actions[1, 9:] == 0)
    assert batch.action_mask[0, :, :4].all() and batch.proprio[0, 0] == 0.0  # proprio at the current frame
    with pytest.raises(ValueError, match="rebuild with data.action_frames >= 12"):
        collator.decode(windows[0])  # 6 stored rows cannot feed a horizon of 12 mid-episode


def tiny_teacher(path):
    from transformers import Dinov2Config, Dinov2Model

    torch.manual_seed(0)
    config = Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                          image_size=32, patch_size=8)
    Dinov2Model(config).save_pretrained(path, safe_serialization=True)
    return path


def test_encoder_caches_are_built_by_actors_and_served_instead_of_pixels(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["sources"].pop("sim")
    raw["data"]["caches"] = ["vae", "teacher"]
    raw["data"]["teacher"] = str(tiny_teacher(tmp_path / "dinov2-tiny"))
    for stage in raw["stages"]:
        stage["mixture"] = {"weights": {"web": 1.0}}
    cfg = validate(raw)
    manifest = build_dataset(cfg)
    vae = make_vae(cfg.model.vae)
    from wamforge.model_zoo.encoders.teacher import VisionTeacher
    teacher = VisionTeacher(cfg.data.teacher)
    assert set(manifest["caches"]) == {vae.cache_id, teacher.cache_id}
    assert teacher.cache_id.startswith("dinov2-") and vae.cache_id == "patchify-s4t4@1"
    data = RunPaths.of(cfg).data
    first = manifest["shards"][0]["path"]
    features = list(wds.WebDataset(str(data / manifest["caches"][teacher.cache_id]["sidecars"][first]),
                                   shardshuffle=False))
    samples = list(wds.WebDataset(str(data / first), shardshuffle=False))
    assert [f["__key__"] for f in features] == [s["__key__"] for s in samples]
    expected = teacher(torch.from_numpy(decode_mp4(samples[0]["mp4"])))
    got = load_npy(features[0]["features.npy"])
    assert got.shape == (9, 1, 17, 32) and np.allclose(got[:, 0], expected.numpy(), atol=1e-3)

    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    collator = Collator(Normalizer({}, registry), registry, {"web": 0}, horizon=4, max_action_dim=8,
                        max_proprio_dim=8, latents=vae.cache_id)
    loader = MixtureLoader(data, cfg.stages[0], collator, rank=0, world=1, batch_size=3, seed=0)
    batch = next(iter(loader))[0]
    assert batch.video is None and batch.latents.shape == (3, 48, 3, 8, 8)
    by_key = {s["__key__"]: s for shard in manifest["shards"]
              for s in wds.WebDataset(str(data / shard["path"]), shardshuffle=False)}
    pixels = torch.stack([video_to_tensor(untile_views(decode_mp4(by_key[k]["mp4"]), 1)) for k in batch.keys])
    torch.testing.assert_close(batch.latents, encode_views(vae, pixels), rtol=0, atol=1e-6)

    stale = Collator(Normalizer({}, registry), registry, {"web": 0}, horizon=4, max_action_dim=8,
                     max_proprio_dim=8, latents="patchify-s4t4@2")  # a changed encoder never reads old latents
    pixel_batch = next(iter(MixtureLoader(data, cfg.stages[0], stale, rank=0, world=1, batch_size=3, seed=0)))[0]
    assert pixel_batch.latents is None and pixel_batch.keys == batch.keys

    model = build_model(cfg, len(registry))
    torch.manual_seed(0)
    from_latents = model.loss(batch, "video", {})["loss"]
    torch.manual_seed(0)
    from_pixels = model.loss(pixel_batch, "video", {})["loss"]
    torch.testing.assert_close(from_latents, from_pixels)


def test_past_context_frames_are_clean_conditioning(tmp_path):
    raw = tiny_config(tmp_path)
    raw["data"]["context_frames"] = 4
    cfg = validate(raw)
    registry = EmbodimentRegistry.from_yaml(cfg.embodiments)
    model = build_model(cfg, len(registry))
    assert (model.latent_frames, model.clean_latents) == (3, 2)

    policy = Policy(model, cfg, registry, stats={}, device=torch.device("cpu"), inference=Inference(action_steps=2))
    rng = np.random.default_rng(0)
    frames = [rng.integers(0, 255, (32, 32, 3), dtype=np.uint8) for _ in range(3)]
    policy.reset()
    for image in frames[:-1]:
        policy.observe({"image": image})
    chunk = policy.act({"image": frames[-1], "proprio": np.zeros(4)}, "reach")
    assert chunk.shape == (4, 4) and np.isfinite(chunk).all()
    assert len(policy.history) == 3  # 4 context frames at stride 1 + the current one fit in 5


def test_context_must_be_whole_latent_frames():
    with pytest.raises(ValueError, match="context_frames must be a multiple of 4"):
        data(context_frames=3)
