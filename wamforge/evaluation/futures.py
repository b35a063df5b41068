"""Predicted futures and open-loop actions on windows of expert episodes the policy never saw.

A window is an expert rollout on an evaluation seed (a layout the training data did not draw), cut
as the training windows are: the context and current frames, the future frames every
`frame_stride` steps, and the next H expert actions. The policy predicts the future (where its
design predicts one) and its action chunk from the observed frames; the report gives PSNR and
SSIM of the future (the real frames as reference) and the chunk's error against the expert, and
the same error on windows of training layouts, so a gap between the two shows overfitting.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from wamforge.data_pipeline.video import resize_center_crop, tile_views
from wamforge.evaluation.episodes import EpisodeSpec
from wamforge.evaluation.visual_metrics import frame_metrics


def expert_window(env, seed: int, steps: int) -> dict:
    """The expert's first `steps` steps from the seed's layout: frames [T, V, H, W, 3], proprio, actions."""
    env.reset(seed)
    frames, proprio, actions = [], [], []
    for _ in range(steps):
        observation = env.observation()
        frames.append(observation["image"])
        proprio.append(observation["proprio"])
        actions.append(np.clip(env.expert_action(), env.action_low, env.action_high).astype(np.float32))
        env.step(actions[-1])
    return {"frames": np.stack(frames), "proprio": np.stack(proprio), "actions": np.stack(actions)}


def score_windows(policy, suite, tasks: list[str], windows: int, seed_base: int, camera: str,
                  resolution: tuple[int, int], max_steps: int, out_dir: Path | None = None,
                  fps: float = 10.0) -> dict:
    """`windows` windows round-robin over the tasks; writes the first few as mp4 when out_dir is given."""
    data = policy.cfg.data
    context, stride = data.context_frames, data.frame_stride
    future = data.clip_frames - context - 1
    start = context * stride  # the first step with a real past
    steps = min(max_steps, start + max(future * stride, policy.horizon) + 1)
    records, envs = [], {}
    try:
        for i in range(windows):
            task = tasks[i % len(tasks)]
            spec = EpisodeSpec("expert", task, seed_base, i // len(tasks))
            env = envs.get(task) or envs.setdefault(task, suite.make_env(task, camera, resolution, max_steps))
            records.append(_score(policy, suite.instruction(task), expert_window(env, spec.episode_seed, steps),
                                  start, stride, future, task, spec.episode_seed, i, out_dir, fps))
    finally:
        for env in envs.values():
            env.close()
    return _summary(records)


def _score(policy, instruction, window, start, stride, future, task, seed, index, out_dir, fps) -> dict:
    frames = np.stack([resize_center_crop(f, policy.resolution) for f in window["frames"]])
    observed = frames[[max(0, start - k * stride) for k in range(policy.cfg.data.context_frames, -1, -1)]]
    policy.reset(seed)
    for step in range(start):  # the past the policy would have seen, at its own stride
        policy.observe({"image": window["frames"][step]})
    chunk = policy.act({"image": window["frames"][start], "proprio": window["proprio"][start]}, instruction)
    expert = window["actions"][start:start + len(chunk)]
    record = {"task": task, "seed": seed, "action_mse": float(np.mean((chunk[: len(expert)] - expert) ** 2))}
    predicted = policy.imagine(observed, window["proprio"][start], instruction)
    real_steps = [start + k * stride for k in range(1, future + 1)]
    if predicted is not None and real_steps[-1] < len(frames):
        real = frames[real_steps]
        scores = frame_metrics(predicted.reshape(-1, *predicted.shape[2:]), real.reshape(-1, *real.shape[2:]))
        record.update(psnr=scores["psnr"].mean, ssim=scores["ssim"].mean)
        if out_dir is not None and index < 4:
            from wamforge.evaluation.videos import future_beside_real, write_mp4

            path = out_dir / "futures" / f"{task}_{seed}.mp4"
            both = [tile_views(np.concatenate([observed, x])) for x in (real, predicted)]
            write_mp4(path, future_beside_real(*both, context=len(observed)), max(1.0, fps / stride))
            record["video"] = str(path.relative_to(out_dir))
    return record


def _summary(records: list[dict]) -> dict:
    summary = {"windows": records, "action_mse": float(np.mean([r["action_mse"] for r in records]))}
    scored = [r for r in records if "psnr" in r]
    if scored:
        summary.update(psnr=float(np.mean([r["psnr"] for r in scored])),
                       ssim=float(np.mean([r["ssim"] for r in scored])))
    return summary
