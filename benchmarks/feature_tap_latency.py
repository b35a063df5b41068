"""Per-chunk inference latency: the feature tap (trunk to block `tap_layer`, then the action expert)
against rendering the future first (a full video denoising rollout through every block, then the
expert), side by side on the same model and inputs. Prints JSON; writes benchmarks/results/.

    python benchmarks/feature_tap_latency.py [--config configs/experiments/quickstart.yaml] [--device cuda]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch

from wamforge.config import load_config
from wamforge.model_zoo.wam import NUM_TRAIN_TIMESTEPS, WorldActionModel


def timed(fn, repeats: int, device: torch.device) -> list[float]:
    fn()  # warm-up
    out = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - start))
    return out


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/experiments/quickstart.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--video-steps", type=int, default=8, help="denoising steps of the rendered future")
    args = parser.parse_args()
    cfg = load_config(args.config)
    device = torch.device(args.device)
    torch.manual_seed(0)
    model = WorldActionModel(cfg.model, num_embodiments=2, clip_frames=cfg.data.clip_frames,
                             resolution=tuple(cfg.data.resolution)).to(device).eval()
    h, w = cfg.data.resolution
    frame = torch.rand(1, 1, 1, 3, h, w, device=device) * 2 - 1
    proprio, proprio_mask = torch.zeros(1, cfg.model.max_proprio_dim, device=device), torch.ones(
        1, cfg.model.max_proprio_dim, dtype=torch.bool, device=device)
    embodiment = torch.zeros(1, dtype=torch.long, device=device)
    steps = cfg.eval.flow_steps

    def feature_tap():
        model.sample_actions(frame, proprio, proprio_mask, embodiment, ["reach the goal"], steps=steps)

    @torch.no_grad()
    def render_then_act():
        # the rendered path denoises the whole future video through every block first
        current = model.encode_video(frame)
        latents = torch.cat([current, torch.randn(1, current.shape[1], model.latent_frames - 1,
                                                  *current.shape[3:], device=device)], dim=2)
        text, mask = model.text_encoder(["reach the goal"])
        _, p_h, p_w = model.trunk.patch_size
        tokens_per_frame = (latents.shape[3] // p_h) * (latents.shape[4] // p_w)
        for i in range(args.video_steps):
            timestep = torch.full((1, latents.shape[2]), 1 - i / args.video_steps, device=device)
            timestep[:, 0] = 0  # the current frame stays clean
            per_token = timestep.repeat_interleave(tokens_per_frame, dim=1)
            velocity, _ = model.trunk(latents, per_token * NUM_TRAIN_TIMESTEPS, text, mask)
            latents[:, :, 1:] = latents[:, :, 1:] - velocity[:, :, 1:] / args.video_steps
        feature_tap()  # then act, as the tap path does

    with torch.no_grad():
        tap = timed(feature_tap, args.repeats, device)
        render = timed(render_then_act, args.repeats, device)
    result = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "config": args.config, "flow_steps": steps,
        "video_steps": args.video_steps,
        "feature_tap_ms_p50": statistics.median(tap), "render_then_act_ms_p50": statistics.median(render),
        "speedup": statistics.median(render) / statistics.median(tap),
    }
    print(json.dumps(result, indent=1))
    out = Path(__file__).parent / "results" / f"feature_tap_latency_{device.type}.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
