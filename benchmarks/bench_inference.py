"""Action-chunk latency of three ways to act with a World Action Model, side by side on one tiny trunk
(the quickstart's: Wan DiT dim 192, 4 blocks, 6 heads, ffn 512, patch 1x2x2; patchify VAE stride 4;
64x64 pixels, a 9-frame clip -> 1 observed + 2 future latent frames, 64 tokens each):

  (a) render, then act - the feature-tap model (mimic-video's design) with render_future=True: the
      future is denoised from 1 to 0 in `video_steps` passes through every trunk block, then tapped
      (trunk to the tap block), then the action expert integrates `action_steps` Euler steps;
  (b) feature tap      - the same model and weights with render_future=False and substrate noise 1.0:
      no video step, the trunk runs once up to the tap block, then the same expert steps;
  (c) joint, video skipped - UWM's joint generation in policy mode: the future held at pure noise, the
      actions denoised; each of the `action_steps` steps is a full trunk pass over video + action tokens.

Random weights (latency does not depend on training), real shapes, batch 1 (one control step's chunk).
The three are timed in interleaved rounds, so drift in machine load hits them alike; medians are
reported. Writes benchmarks/results/bench_inference_<device>.json.

    .venv/bin/python benchmarks/bench_inference.py [--repeats 20 --warmup 3 --threads 2 --device cpu]
"""
from __future__ import annotations

import argparse
import copy
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from wamforge.config import validate  # noqa: E402
from wamforge.model_zoo.build import build_model  # noqa: E402
from wamforge.model_zoo.inference import Inference  # noqa: E402

QUICKSTART = ROOT / "configs/experiments/quickstart.yaml"


def configs(video_steps: int, action_steps: int, trunk: dict | None = None, tap_layer: int | None = None) -> tuple:
    """(feature-tap config, uwm config): the quickstart with its trunk (or `trunk` laid over it), VAE
    and text, and each design."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["model"]["trunk"].update(trunk or {})
    if tap_layer is not None:
        raw["model"]["substrate"]["layer"] = tap_layer
    shared = {k: raw["model"][k] for k in ("trunk", "vae", "text")}
    tap = copy.deepcopy(raw)  # the quickstart as it is: mimic_video's design on the wan trunk, tap at block 2
    tap["model"]["substrate"] = {**raw["model"]["substrate"], "noise": 1.0}
    uwm = copy.deepcopy(raw)
    uwm["model"] = {"recipe": "uwm", **copy.deepcopy(shared)}
    for r in (tap, uwm):
        r["eval"].update(flow_steps=action_steps)
    return validate(tap, QUICKSTART), validate(uwm, QUICKSTART)


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=2, help="torch intra-op threads (CPU)")
    p.add_argument("--repeats", type=int, default=20, help="timed rounds; each round times (a), (b) and (c) once")
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--video-steps", type=int, default=8)
    p.add_argument("--action-steps", type=int, default=8)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--trunk", type=yaml.safe_load, default=None,
                   help="trunk fields over the quickstart's, e.g. '{dim: 384, layers: 8, heads: 6, ffn_dim: 1024}'")
    p.add_argument("--tap-layer", type=int, default=None, help="the feature tap's block (default: the quickstart's)")
    p.add_argument("--chunks", type=int, default=8, help="(d): chunks of the episode before the timed call")
    p.add_argument("--sections", default="d,e,f", help="which of (d), (e), (f) to run after (a)-(c)")
    p.add_argument("--out", type=Path, default=None)
    args = p.parse_args()
    console = Console(width=int(os.environ.get("COLUMNS", 140)))
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    tap_cfg, uwm_cfg = configs(args.video_steps, args.action_steps, args.trunk, args.tap_layer)

    torch.manual_seed(0)
    tap_model = build_model(tap_cfg, 2).to(device).eval()
    uwm_model = build_model(uwm_cfg, 2).to(device).eval()
    h, w = tap_cfg.data.resolution
    b = args.batch
    gen = torch.Generator(device=device).manual_seed(0)
    frame = torch.rand(b, 1 + tap_cfg.data.context_frames, 1, 3, h, w, generator=gen, device=device) * 2 - 1
    p_max = tap_cfg.model.max_proprio_dim
    proprio = torch.randn(b, p_max, generator=gen, device=device)
    proprio_mask = torch.zeros(b, p_max, dtype=torch.bool, device=device)
    proprio_mask[:, :4] = True
    embodiment = torch.zeros(b, dtype=torch.long, device=device)
    text = ["reach the goal"] * b

    render = Inference(action_steps=args.action_steps, video_steps=args.video_steps, render_future=True)
    skip = Inference(action_steps=args.action_steps, video_steps=args.video_steps, render_future=False)
    cases = {
        "a": ("render the future, then act", tap_model, render),
        "b": ("feature tap (noise 1.0)", tap_model, skip),
        "c": ("joint generation, video skipped (uwm policy)", uwm_model, skip),
        # not one of the three: (b) with a single expert step, to split (b) into tap pass and expert steps
        "b1": ("feature tap, 1 action step (breakdown)", tap_model,
               Inference(action_steps=1, video_steps=args.video_steps, render_future=False)),
    }

    def chunk(key: str) -> torch.Tensor:
        _, model, inference = cases[key]
        return model.sample_actions(frame, proprio, proprio_mask, embodiment, text, inference=inference,
                                    generator=torch.Generator(device=device).manual_seed(0))

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    times = {k: [] for k in cases}
    with torch.no_grad():
        for _ in range(args.warmup):
            for key in cases:
                chunk(key)
        for _ in range(args.repeats):
            for key in cases:
                sync()
                start = time.perf_counter()
                out = chunk(key)
                sync()
                times[key].append(1000 * (time.perf_counter() - start))
                assert out.shape == (b, tap_cfg.model.regime.horizon, tap_cfg.model.max_action_dim)
    p50 = {k: statistics.median(v) for k, v in times.items()}
    trunk = tap_cfg.model.trunk
    tokens = tap_model.latent_frames * (h // 4 // trunk.patch[1]) * (w // 4 // trunk.patch[2])
    res = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "cpus": os.cpu_count(),
        "load_avg_1m_before": load_before,
        "batch": b, "repeats": args.repeats, "warmup": args.warmup,
        "video_steps": args.video_steps, "action_steps": args.action_steps,
        "trunk": trunk.model_dump(mode="json"), "resolution": [h, w], "clip_frames": tap_cfg.data.clip_frames,
        "video_tokens": tokens, "tap_layer": tap_cfg.model.substrate.layer,
        "designs": {"a": list(tap_model.design), "b": list(tap_model.design), "c": list(uwm_model.design)},
        "ms_p50": {k: round(v, 3) for k, v in p50.items()},
        "ms_min": {k: round(min(v), 3) for k, v in times.items()},
        "ms_p95": {k: round(sorted(v)[max(0, int(0.95 * len(v)) - 1)], 3) for k, v in times.items()},
        "ratios": {"a/b": round(p50["a"] / p50["b"], 2), "a/c": round(p50["a"] / p50["c"], 2),
                   "c/b": round(p50["c"] / p50["b"], 2)},
        "ratios_of_min": {"a/b": round(min(times["a"]) / min(times["b"]), 2),
                          "a/c": round(min(times["a"]) / min(times["c"]), 2),
                          "c/b": round(min(times["c"]) / min(times["b"]), 2)},
    }
    # (b) = tap pass + action_steps expert steps; (b1) = tap pass + 1 expert step
    expert_step = (p50["b"] - p50["b1"]) / max(1, args.action_steps - 1)
    res["breakdown_ms"] = {"expert_step": round(expert_step, 3), "tap_pass": round(p50["b1"] - expert_step, 3),
                           "full_trunk_pass": round((p50["a"] - p50["b"]) / args.video_steps, 3),
                           "uwm_step": round(p50["c"] / args.action_steps, 3)}
    res["load_avg_1m_after"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None

    table = Table(title=f"action-chunk latency, batch {b}, {res['device']}, {res['threads']} threads, "
                        f"median of {args.repeats} (video steps {args.video_steps}, action steps {args.action_steps})")
    for col, justify in (("", "left"), ("path", "left"), ("trunk work per chunk", "left"), ("ms p50", "right"),
                         ("ms min", "right"), ("ms p95", "right")):
        table.add_column(col, justify=justify)
    work = {"a": f"{args.video_steps} x {trunk.layers} blocks + {tap_cfg.model.substrate.layer} (tap) + expert",
            "b": f"1 x {tap_cfg.model.substrate.layer} blocks (tap) + expert",
            "c": f"{args.action_steps} x {trunk.layers} blocks over video + action tokens",
            "b1": f"1 x {tap_cfg.model.substrate.layer} blocks (tap) + 1 expert step"}
    for key, (name, _, _) in cases.items():
        table.add_row(key, name, work[key], f"{p50[key]:.1f}", f"{res['ms_min'][key]:.1f}", f"{res['ms_p95'][key]:.1f}")
    console.print(table)
    ratios = Table(title="ratios")
    ratios.add_column("ratio")
    ratios.add_column("of medians", justify="right")
    ratios.add_column("of minima", justify="right")
    ratios.add_column("meaning")
    for key, meaning in (("a/b", "rendering the future vs the feature tap (target >= 10x)"),
                         ("a/c", "rendering the future vs joint generation with video skipped"),
                         ("c/b", "joint generation with video skipped vs the feature tap")):
        ratios.add_row(key, f"{res['ratios'][key]:.1f}x", f"{res['ratios_of_min'][key]:.1f}x", meaning)
    console.print(ratios)
    d = res["breakdown_ms"]
    console.print(f"breakdown (medians): full trunk pass {d['full_trunk_pass']:.1f} ms, "
                  f"tap pass {d['tap_pass']:.1f} ms, "
                  f"expert step {d['expert_step']:.1f} ms x {args.action_steps}, uwm step {d['uwm_step']:.1f} ms")
    verdict = "[green]met[/]" if res["ratios"]["a/b"] >= 10 else "[red]missed[/]"
    console.print(f"a/b >= 10x target: {verdict}; load average {res['load_avg_1m_before']:.2f} -> "
                  f"{res['load_avg_1m_after']:.2f} on {res['cpus']} cores")
    for key, section in (("d", interactive_vs_recompute), ("e", render_and_decode), ("f", planning_cost)):
        if key in args.sections:
            res[section.__name__] = section(args, device, console)
    suffix = "" if args.trunk is None else f"_dim{trunk.dim}x{trunk.layers}"
    out = args.out or ROOT / "benchmarks/results" / f"bench_inference_{device.type}{suffix}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(res, indent=1) + "\n")
    console.print(f"written to {out}")


def quickstart_with(model: dict, args) -> dict:
    """The quickstart experiment with its trunk, VAE and text, and `model` (a design) laid over them."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["model"]["trunk"].update(args.trunk or {})
    raw["model"] = {**{k: raw["model"][k] for k in ("trunk", "vae", "text")}, **model}
    raw["eval"].update(flow_steps=args.action_steps, video_steps=args.video_steps, execute_steps=1)
    return raw


def interactive_vs_recompute(args, device, console) -> dict:
    """(d) The interactive regime's KV cache against recomputing the whole history before every trunk
    pass (what a model without a cache does), on two designs: LingBot-VA's (the future rendered with
    `video_steps` passes that read the cache, kept there until the real frame replaces it) and Fast-WAM's
    (one pass over the new frame; its head then reads every cached frame's keys and values). Each round
    plays `chunks` calls of one episode, one new real frame each, and times the next call. Cache and
    recompute give the same chunk (tests/model_zoo/test_regimes.py); only the work differs."""
    designs = {"lingbot_va": Inference(action_steps=args.action_steps, video_steps=args.video_steps,
                                       render_future=True),
               "fast_wam": Inference(action_steps=args.action_steps)}
    out = {}
    for recipe, inference in designs.items():
        cfg = validate(quickstart_with({"recipe": recipe, "regime": {"kind": "interactive", "horizon": 8}}, args),
                       QUICKSTART)
        torch.manual_seed(0)
        model = build_model(cfg, 2).to(device).eval()
        h, w = cfg.data.resolution
        gen = torch.Generator(device=device).manual_seed(0)
        frames = [model.encode_video(torch.rand(1, 1, 1, 3, h, w, generator=gen, device=device) * 2 - 1)
                  for _ in range(args.chunks + 1)]
        p_max = cfg.model.max_proprio_dim
        inputs = (torch.zeros(1, p_max, device=device), torch.zeros(1, p_max, dtype=torch.bool, device=device),
                  torch.zeros(1, dtype=torch.long, device=device), ["open the drawer"], inference)
        times: dict[str, list[float]] = {"cached": [], "recompute": []}
        with torch.no_grad():
            for round_ in range(args.warmup + args.repeats):
                for key in times:
                    session = model.regime.session(model, recompute=key == "recompute")
                    for frame in frames[:-1]:  # the episode so far: `chunks` calls
                        session.act(frame, *inputs, torch.Generator(device=device).manual_seed(0))
                    start = time.perf_counter()
                    session.act(frames[-1], *inputs, torch.Generator(device=device).manual_seed(0))
                    if device.type == "cuda":
                        torch.cuda.synchronize()
                    if round_ >= args.warmup:
                        times[key].append(1000 * (time.perf_counter() - start))
        p50 = {k: statistics.median(v) for k, v in times.items()}
        out[recipe] = {"design": list(model.design), "inference": inference.as_dict(),
                       "ms_p50": {k: round(v, 3) for k, v in p50.items()},
                       "ratio": round(p50["recompute"] / p50["cached"], 2)}
    table = Table(title=f"(d) interactive: the call after {args.chunks} chunks, median of {args.repeats}")
    for col in ("design", "KV cache ms p50", "recompute the history ms p50", "recompute / cache"):
        table.add_column(col)
    for recipe, r in out.items():
        table.add_row(recipe, f"{r['ms_p50']['cached']:.1f}", f"{r['ms_p50']['recompute']:.1f}", f"{r['ratio']:.1f}x")
    console.print(table)
    verdict = "[green]met[/]" if out["lingbot_va"]["ratio"] >= 3 else "[red]missed[/]"
    console.print(f"cache >= 3x faster than recomputing (LingBot-VA's design): {verdict}")
    return out


def observation(cfg, device):
    """One observed frame (and context) of the experiment's geometry, and the other `act` inputs."""
    h, w = cfg.data.resolution
    gen = torch.Generator(device=device).manual_seed(0)
    frame = torch.rand(1, 1 + cfg.data.context_frames, 1, 3, h, w, generator=gen, device=device) * 2 - 1
    p_max = cfg.model.max_proprio_dim
    return (frame, torch.zeros(1, p_max, device=device), torch.zeros(1, p_max, dtype=torch.bool, device=device),
            torch.zeros(1, dtype=torch.long, device=device), ["open the drawer"])


def timed(fn, warmup: int, repeats: int, device) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        out.append(1000 * (time.perf_counter() - start))
    return out


def render_and_decode(args, device, console) -> dict:
    """(e) Render-and-decode (VLP's design): the future denoised fully, decoded to pixels by the VAE, and
    an inverse-dynamics head over consecutive frames; with the real Wan2.1 VAE architecture (random
    weights: the cost, not the picture) against the patchify stand-in, and the decode's share."""
    out = {}
    with torch.no_grad():
        for vae in ("wan2.1", "patchify"):
            raw = quickstart_with({"recipe": "vlp"}, args)
            if vae == "wan2.1":
                raw["model"]["vae"] = {"kind": "wan2.1"}
            cfg = validate(raw, QUICKSTART)
            torch.manual_seed(0)
            model = build_model(cfg, 2).to(device).eval()
            frame, *rest = observation(cfg, device)
            inference = Inference(action_steps=args.action_steps, video_steps=args.video_steps)
            act = timed(lambda: model.sample_actions(frame, *rest, inference=inference,
                                                     generator=torch.Generator(device=device).manual_seed(0)),
                        1, max(3, args.repeats // 4), device)
            latents = torch.cat([model.encode_video(frame)] * model.latent_frames, dim=2)[:, :, :model.latent_frames]
            decode = timed(lambda: model.vae.decode(latents), 1, max(3, args.repeats // 4), device)
            out[vae] = {"act_ms_p50": round(statistics.median(act), 1),
                        "decode_ms_p50": round(statistics.median(decode), 1),
                        "decode_share": round(statistics.median(decode) / statistics.median(act), 3),
                        "vae": cfg.model.vae.model_dump(mode="json")}
    table = Table(title=f"(e) render-and-decode (VLP's design), {args.video_steps} video steps, chunk of "
                        f"{cfg.model.regime.horizon} actions")
    for col in ("VAE", "act ms p50", "decode ms p50", "decode share"):
        table.add_column(col)
    for vae, r in out.items():
        table.add_row(vae, f"{r['act_ms_p50']:.1f}", f"{r['decode_ms_p50']:.1f}", f"{100 * r['decode_share']:.0f}%")
    console.print(table)
    return out


def planning_cost(args, device, console) -> dict:
    """(f) Planning over the action-conditioned rollout coupling (V-JEPA 2-AC's CEM, PointWorld's
    MPPI, best-of-N with the learned value): one chunk's latency and its cost per scored candidate.
    Every iteration scores all its candidates in one batched world-model call."""
    planners = {"cem": {"kind": "cem", "samples": 32, "elites": 4, "iterations": 3},
                "mppi": {"kind": "mppi", "samples": 32, "iterations": 3},
                "best_of_n": {"kind": "best_of_n", "samples": 32}}
    out = {}
    with torch.no_grad():
        for name, planner in planners.items():
            raw = quickstart_with({"recipe": "vjepa2_ac", "coupling": {"kind": "action_conditioned_rollout",
                                                                       "planner": planner}}, args)
            cfg = validate(raw, QUICKSTART)
            torch.manual_seed(0)
            model = build_model(cfg, 2).to(device).eval()
            frame, *rest = observation(cfg, device)
            inference = Inference(action_steps=args.action_steps, video_steps=2)
            ms = statistics.median(timed(lambda: model.sample_actions(
                frame, *rest, inference=inference, generator=torch.Generator(device=device).manual_seed(0)),
                1, max(3, args.repeats // 4), device))
            scored = planner["samples"] * planner.get("iterations", 1)
            out[name] = {"planner": planner, "chunk_ms_p50": round(ms, 1), "candidates": scored,
                         "ms_per_candidate": round(ms / scored, 2)}
    table = Table(title="(f) planning cost on the rollout coupling (world model: 2 video steps per candidate)")
    for col in ("planner", "candidates scored", "chunk ms p50", "ms per candidate"):
        table.add_column(col)
    for name, r in out.items():
        table.add_row(name, str(r["candidates"]), f"{r['chunk_ms_p50']:.1f}", f"{r['ms_per_candidate']:.2f}")
    console.print(table)
    return out


if __name__ == "__main__":
    main()
