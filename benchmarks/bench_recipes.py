"""The recipes (every one in RECIPES: three couplings, four regimes) trained at the same budget on the
quickstart's data through the real CLI (`wamforge run`: build -> train -> export -> closed-loop
Meta-World eval), side by side: each recipe's survey 4-tuple, its success rate beside the scripted
expert's and the random policy's (from the same summary.json), its chunk latency and peak memory.

Every recipe gets the quickstart's stages (video pretraining, joint alignment, action fine-tuning)
with the same step counts (`--steps video,joint,action`), the quickstart's trunk width and the same
eval; each is its own experiment (runs/bench_recipes/<recipe>/) and all read ONE shared data build
(runs/bench_recipes/data/). What had to be set to fit a recipe onto the quickstart's trunk is
printed beside it.

UWM then, from its exported policy, on held-out windows (the sim source built again with another
seed: episodes no recipe trained on), as one model in its other sample modes:
  forward dynamics - future latents predicted given the window's TRUE actions vs SHUFFLED ones
                     (another window's); gap = MSE(shuffled) - MSE(true), positive if the actions are used;
  inverse dynamics - actions predicted given the TRUE future latents vs a SHUFFLED future;
                     gap = MSE(shuffled) - MSE(true) over the real action entries.
Both use one fixed torch.Generator seed, so true and shuffled see the same noise.

    .venv/bin/python benchmarks/bench_recipes.py [--steps 60,60,120 --episodes 2 --world-size 1] [--quiet]

Defaults as measured on 2 shared CPU cores: the recipes train, export and evaluate in ~3.5 min each
(plus ~2.5 min for the shared data build and ~1 min for the held-out one, once). One rank with 2
threads steps in ~0.55 s; 2 ranks with 1 thread each in ~1.0 s (same samples/s), so at a fixed step
budget world size 1 is the faster one. At 60 joint steps UWM's dynamics gaps are still ~0; with
`--recipes uwm --steps 60,400,120` both come out positive.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import sys
import time
from pathlib import Path

import torch
import yaml
from rich.console import Console
from rich.table import Table

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.chdir(ROOT)  # the quickstart's relative paths (embodiments, run_dir) are from the repository root
from wamforge.config import validate  # noqa: E402
from wamforge.config.paths import RunPaths  # noqa: E402
from wamforge.model_zoo.build import design  # noqa: E402

QUICKSTART = ROOT / "configs/experiments/quickstart.yaml"
RECIPES = ("mimic_video", "genie_envisioner", "dit4dit", "uwm", "fast_wam", "cosmos_policy", "pad", "vpp", "unipi",
           "vlp", "dreamavoid", "vjepa2_ac", "lingbot_va")
NO_EXPERT = ("uwm", "pad", "cosmos_policy", "dreamavoid", "vjepa2_ac")  # couplings with no `action_expert`
console = Console(width=int(os.environ.get("COLUMNS", 180)))


# ----------------------------------------------------------------------------- configs

def base_raw(args) -> dict:
    """The quickstart at the benchmark's budget, its data shared by every recipe."""
    raw = yaml.safe_load(QUICKSTART.read_text())
    raw["run_dir"] = str(args.root)
    raw["data"]["out_dir"] = str(args.root / "data")
    raw["data"]["sources"]["web_standin"]["path"] = str(args.root / "raw/web_standin")
    threads = max(1, args.cores // args.world_size)
    raw["training"].update(world_size=args.world_size, threads_per_rank=threads, checkpoint_every=10**6,
                           tensorboard=False)
    for stage, steps in zip(raw["stages"], args.steps):
        stage["steps"] = steps
        stage["warmup_steps"] = min(stage.get("warmup_steps", 0), max(1, steps // 10))
        for point in stage["mixture"].get("curriculum", []):  # the curriculum keeps its shape over fewer steps
            point["step"] = round(point["step"] * steps / 400)
    raw["eval"].update(episodes=args.episodes, max_steps=args.max_steps, workers=1, videos=0, future_windows=0)
    return raw


def recipe_raw(base: dict, name: str) -> tuple[dict, list[str]]:
    """One recipe's own design on the quickstart's trunk sizes; returns (raw config, what was set)."""
    raw = copy.deepcopy(base)
    q = base["model"]
    raw["name"] = name
    model = {"recipe": name, "trunk": copy.deepcopy(q["trunk"]), "vae": copy.deepcopy(q["vae"]),
             "text": copy.deepcopy(q["text"])}
    notes = []
    wan = q["trunk"]
    if name in ("mimic_video", "cosmos_policy"):  # their recipe trunk is Cosmos: kept, at the quickstart's size
        model["trunk"] = {"kind": "cosmos", "heads": wan["heads"], "head_dim": wan["dim"] // wan["heads"],
                          "layers": wan["layers"], "patch": wan["patch"]}
        notes.append(f"trunk cosmos {wan['heads']} heads x {wan['dim'] // wan['heads']} = {wan['dim']}, "
                     f"{wan['layers']} layers (mlp x4)")
    else:
        notes.append(f"trunk wan dim {wan['dim']}, {wan['layers']} layers, {wan['heads']} heads, ffn {wan['ffn_dim']}")
    if name == "mimic_video":
        model["substrate"] = {"kind": "feature.tap", "layer": 2, "noise": 0.8}
        notes.append("tap layer 2 of 4, tau 0.8 (recipe's)")
    if name == "genie_envisioner":
        model["substrate"] = {"kind": "feature.tap", "layer": wan["layers"], "noise": 1.0}
        notes.append(f"tap layer {wan['layers']} = all blocks (layerwise head)")
    if name in NO_EXPERT:  # no separate action expert: the action stage trains the whole model
        action_stage = next(s for s in raw["stages"] if s["objective"] == "action")
        action_stage["trainable"] = ["*"]
        notes.append("action stage trains all weights (no expert module)")
    if name in ("pad", "vpp"):  # single-step: H = K = 1
        raw["eval"]["execute_steps"] = 1
        notes.append("K = 1 (single-step)")
    if name == "unipi":  # H ~ T needs clips of H + 1 frames; the quickstart's hold 9
        model["regime"] = {"kind": "open_loop", "horizon": 8}
        notes.append("open-loop plan H = 8 (9-frame clips), episode ends with it")
    if name == "vjepa2_ac":  # MPC over a 2-step chunk: the planner's cost is paid every 2 steps
        raw["eval"].update(execute_steps=2, video_steps=2)
        model["coupling"] = {"kind": "action_conditioned_rollout",
                             "planner": {"kind": "cem", "samples": 16, "elites": 4, "iterations": 2}}
        notes.append("K = H = 2; CEM 16 samples x 2 iterations, 2 world-model steps per candidate")
    if name == "dreamavoid":
        raw["eval"]["video_steps"] = 4
        notes.append("4 world-model steps per candidate")
    if name == "lingbot_va":  # video first, kept in the cache, then actions
        raw["eval"]["render_future"] = True
        notes.append("render_future (video first, cached)")
    raw["model"] = model
    return raw, notes


def heldout_raw(base: dict, args) -> dict:
    """The sim source alone, other seeds: episodes the training data does not hold."""
    raw = copy.deepcopy(base)
    sim = {**raw["data"]["sources"]["sim"], "seed": args.heldout_seed, "episodes_per_task": args.heldout_episodes}
    raw["name"] = "heldout"
    raw["data"]["sources"] = {"sim": sim}
    raw["data"]["out_dir"] = str(args.root / "heldout")
    raw["stages"] = [{"name": "none", "objective": "action", "steps": 1, "mixture": {"weights": {"sim": 1.0}}}]
    return raw


# ----------------------------------------------------------------------------- the runs

def run_recipe(raw: dict, args) -> dict:
    from wamforge.cli import main as cli

    path = args.root / "configs" / f"{raw['name']}.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    cfg = validate(raw, path)
    summary_path = RunPaths.of(cfg).root / "summary.json"
    same = path.is_file() and yaml.safe_load(path.read_text()) == raw
    if args.reuse and same and summary_path.is_file():  # this very experiment already ran to its end
        summary = json.loads(summary_path.read_text())
        return {"rc": 0, "wall_s": summary["wall_seconds"], "config": str(path), "run_dir": str(RunPaths.of(cfg).root),
                "summary": summary, "reused": True}
    path.write_text(yaml.safe_dump(raw, sort_keys=False))
    summary_path.unlink(missing_ok=True)
    started = time.perf_counter()
    argv = ["run", str(path)] + ([] if args.resume else ["--overwrite"])
    log = args.root / f"{raw['name']}.log"
    if args.quiet:  # the CLI's own tables and progress go to the log
        with log.open("w") as f, contextlib.redirect_stdout(f):
            code = cli(argv)
    else:
        code = cli(argv)
    wall = time.perf_counter() - started
    out = {"rc": code, "wall_s": round(wall, 1), "config": str(path), "run_dir": str(RunPaths.of(cfg).root)}
    if code == 0 and summary_path.exists():
        out["summary"] = json.loads(summary_path.read_text())
    return out


def dynamics_gaps(export_dir: Path, heldout_dir: Path, args) -> dict:
    """Forward- and inverse-dynamics errors of UWM's exported model, true vs shuffled conditioning."""
    from wamforge.data_pipeline.loader.collate import Collator, Normalizer
    from wamforge.data_pipeline.loader.shard_stream import ShardStream
    from wamforge.model_zoo.inference import Inference
    from wamforge.evaluation.policy import load_policy

    policy = load_policy(export_dir, device="cpu" if not torch.cuda.is_available() else None)
    model, cfg = policy.model.eval(), policy.cfg
    device = next(model.parameters()).device
    collator = Collator(Normalizer(policy.normalizer.stats, policy.registry, cfg.model.normalization), policy.registry,
                        {n: i for i, n in enumerate(cfg.data.sources)}, horizon=model.horizon,
                        max_action_dim=cfg.model.max_action_dim, max_proprio_dim=cfg.model.max_proprio_dim)
    manifest = json.loads((heldout_dir / "manifest.json").read_text())
    shards = [heldout_dir / s for s in manifest["sources"]["sim"]["shards"]]
    total = manifest["sources"]["sim"]["samples"]
    # a fixed, seeded pick of windows spread over all held-out episodes
    pick = set(torch.randperm(total, generator=torch.Generator().manual_seed(args.seed))[: args.dyn_windows].tolist())
    items = []
    for index, raw in enumerate(ShardStream(shards, 0, 1, seed=args.seed)):
        if index >= total:
            break
        if index in pick:
            items.append(collator.decode(raw))
    items = [i for i in items if i["has_actions"]]
    order = torch.randperm(len(items), generator=torch.Generator().manual_seed(args.seed)).tolist()
    items = [items[i] for i in order]
    inference = Inference(action_steps=args.dyn_steps, video_steps=args.dyn_steps)
    sums = {k: 0.0 for k in ("fd_true", "fd_shuffled", "id_true", "id_shuffled", "id_true_all_dims")}
    counts = {"fd": 0, "id": 0}
    with torch.no_grad():
        for start in range(0, len(items), args.dyn_batch):
            chunk = items[start:start + args.dyn_batch]
            if len(chunk) < 2:
                break
            batch = collator.collate(chunk).to(device)
            shift = len(batch) // 2  # windows are in random order: the shuffled partner is another episode's
            clean = model.clean_latents
            latents = model.encode_video(batch.video)
            observed, future = latents[:, :, :clean], latents[:, :, clean:]
            common = dict(observed_latents=observed, proprio=batch.proprio, proprio_mask=batch.proprio_mask,
                          embodiment_id=batch.embodiment_id, text=batch.text, inference=inference)

            def sample(mode, **given):
                kwargs = dict(common)
                obs = kwargs.pop("observed_latents")
                return model.coupling.sample(model, mode, obs, generator=torch.Generator(device=device).manual_seed(
                    args.seed), **kwargs, **given)

            actions = batch.actions.float()
            for key, acts in (("fd_true", actions), ("fd_shuffled", actions.roll(shift, dims=0))):
                _, predicted = sample("forward_dynamics", actions=acts)
                sums[key] += ((predicted.float() - future.float()) ** 2).sum().item()
            counts["fd"] += future.numel()
            real = (batch.action_mask & batch.has_actions[:, None, None]).float()
            for key, fut in (("id_true", future), ("id_shuffled", future.roll(shift, dims=0))):
                predicted, _ = sample("inverse_dynamics", future=fut)
                sums[key] += (((predicted.float() - actions) ** 2) * real).sum().item()
            # diagnostic: every action dim embedded, as the training loss embeds them (its noise included)
            predicted, _ = sample("inverse_dynamics", future=future,
                                  action_mask=torch.ones_like(batch.action_mask[:, 0]))
            sums["id_true_all_dims"] += (((predicted.float() - actions) ** 2) * real).sum().item()
            counts["id"] += int(real.sum().item())
    fd = {k: sums[k] / max(1, counts["fd"]) for k in ("fd_true", "fd_shuffled")}
    inv = {k: sums[k] / max(1, counts["id"]) for k in ("id_true", "id_shuffled", "id_true_all_dims")}
    return {"windows": len(items), "batch": args.dyn_batch, "steps": args.dyn_steps, "seed": args.seed,
            "heldout": {"seed": args.heldout_seed, "episodes_per_task": args.heldout_episodes,
                        "windows_built": total},
            "forward_dynamics": {"mse_true_actions": fd["fd_true"], "mse_shuffled_actions": fd["fd_shuffled"],
                                 "gap": fd["fd_shuffled"] - fd["fd_true"], "latent_entries": counts["fd"]},
            "inverse_dynamics": {"mse_true_future": inv["id_true"], "mse_shuffled_future": inv["id_shuffled"],
                                 "gap": inv["id_shuffled"] - inv["id_true"], "action_entries": counts["id"],
                                 "mse_true_future_all_dims_embedded": inv["id_true_all_dims"]}}


# ----------------------------------------------------------------------------- report

def print_report(res: dict) -> None:
    table = Table(title=f"recipes at one budget: steps video/joint/action = {'/'.join(map(str, res['steps']))}, "
                        f"{res['eval']['episodes']} episodes x {len(res['eval']['suite']['tasks'])} tasks, "
                        f"world size {res['world_size']}")
    for col, justify in (("recipe", "left"), ("4-tuple (substrate | backbone | coupling | regime)", "left"),
                         ("set to fit the quickstart trunk", "left"), ("success", "right"), ("expert", "right"),
                         ("random", "right"), ("latency p50 ms", "right"), ("p95", "right"),
                         ("peak RSS MB", "right"), ("final loss", "right"), ("wall s", "right")):
        table.add_column(col, justify=justify)
    for name, r in res["recipes"].items():
        s = r.get("summary")
        if s is None:
            table.add_row(name, " | ".join(r["design"]), "; ".join(r["set"]), f"[red]failed rc {r['rc']}[/]",
                          "", "", "", "", "", "", f"{r['wall_s']:.0f}")
            continue
        ev, lat, mem = s["eval"], s.get("latency_ms", {}), s.get("peak_memory_mb", {})
        last = s["stages"][-1].get("last_loss", float("nan"))
        table.add_row(name, " | ".join(r["design"]), "; ".join(r["set"]), f"{ev['policy']['pc_success'] / 100:.2f}",
                      f"{ev['expert']['pc_success'] / 100:.2f}", f"{ev['random']['pc_success'] / 100:.2f}",
                      f"{lat.get('p50', float('nan')):.1f}", f"{lat.get('p95', float('nan')):.1f}",
                      f"{mem.get('rss', float('nan')):.0f}", f"{last:.3f}", f"{r['wall_s']:.0f}")
    console.print(table)
    dyn = res.get("uwm_dynamics")
    if dyn:
        t = Table(title=f"UWM on {dyn['windows']} held-out windows (sim seed {dyn['heldout']['seed']}), "
                        f"{dyn['steps']} Euler steps, generator seed {dyn['seed']}")
        for col in ("mode", "MSE, true conditioning", "MSE, shuffled", "gap (shuffled - true)", "gap > 0"):
            t.add_column(col, justify="left" if col == "mode" else "right")
        for mode, a, b in (("forward dynamics (future latents | actions)", "mse_true_actions", "mse_shuffled_actions"),
                           ("inverse dynamics (actions | future)", "mse_true_future", "mse_shuffled_future")):
            d = dyn[mode.split(" (")[0].replace(" ", "_")]
            ok = "[green]yes[/]" if d["gap"] > 0 else "[red]no[/]"
            t.add_row(mode, f"{d[a]:.5f}", f"{d[b]:.5f}", f"{d['gap']:+.5f}", ok)
        console.print(t)
        inv = dyn["inverse_dynamics"]
        console.print(f"diagnostic: inverse dynamics, true future, every action dim embedded (as the training "
                      f"loss embeds them): MSE {inv['mse_true_future_all_dims_embedded']:.5f} vs "
                      f"{inv['mse_true_future']:.5f} with the embodiment's dims only (sample()'s default)")
    console.print(f"wall time: data build {res['wall_s']['data_build']:.0f} s, held-out build "
                  f"{res['wall_s']['heldout_build']:.0f} s, recipes {res['wall_s']['recipes']:.0f} s, "
                  f"dynamics {res['wall_s'].get('dynamics', 0):.0f} s, total {res['wall_s']['total']:.0f} s; "
                  f"load average {res['load_avg'][0]:.2f} / {res['load_avg'][1]:.2f} (start / end) on "
                  f"{res['cpus']} cores")


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--steps", default="60,60,120", help="steps of the video, joint and action stages")
    p.add_argument("--episodes", type=int, default=2, help="eval episodes per task")
    p.add_argument("--max-steps", type=int, default=100, help="eval episode step limit")
    p.add_argument("--world-size", type=int, default=1, help="training ranks (threads per rank: cores / ranks)")
    p.add_argument("--cores", type=int, default=2, help="CPU cores to share among the ranks and for eval")
    p.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    p.add_argument("--root", type=Path, default=Path("runs/bench_recipes"))
    p.add_argument("--suffix", default="", help="appended to every experiment name (runs beside the default ones)")
    p.add_argument("--resume", action="store_true", help="keep stages already trained (default: train again)")
    p.add_argument("--reuse", action="store_true", help="keep the results of a recipe whose same experiment "
                                                        "already ran to its summary (default: run it again)")
    p.add_argument("--quiet", action="store_true", help="send the CLI's own output to <root>/<recipe>.log")
    p.add_argument("--seed", type=int, default=0, help="the dynamics' torch.Generator seed and window pick")
    p.add_argument("--heldout-seed", type=int, default=7, help="sim seed of the held-out episodes (training: 0)")
    p.add_argument("--heldout-episodes", type=int, default=2, help="held-out episodes per task")
    p.add_argument("--dyn-windows", type=int, default=48, help="held-out windows for the dynamics gaps")
    p.add_argument("--dyn-batch", type=int, default=16)
    p.add_argument("--dyn-steps", type=int, default=8, help="Euler steps of the denoised stream")
    p.add_argument("--out", type=Path, default=ROOT / "benchmarks/results/bench_recipes.json")
    args = p.parse_args()
    args.steps = [int(s) for s in args.steps.split(",")]
    if len(args.steps) != 3:
        raise SystemExit("--steps takes three counts: video,joint,action")
    torch.set_num_threads(args.cores)  # the in-process eval and the dynamics
    from wamforge.data_pipeline.build.pipeline import build_dataset

    load_start = os.getloadavg()[0]
    started = time.perf_counter()
    base = base_raw(args)
    res = {"steps": args.steps, "world_size": args.world_size, "cores": args.cores, "cpus": os.cpu_count(),
           "threads_per_rank": base["training"]["threads_per_rank"], "eval": base["eval"],
           "shared_data": base["data"]["out_dir"], "recipes": {}, "wall_s": {}}

    t = time.perf_counter()  # the one shared build (each `run` then finds it up to date)
    first = validate(recipe_raw(base, args.recipes[0])[0])
    build_dataset(first, console=console)
    res["wall_s"]["data_build"] = round(time.perf_counter() - t, 1)
    t = time.perf_counter()
    heldout = validate(heldout_raw(base, args))
    if "uwm" in args.recipes:
        build_dataset(heldout, console=console)
    res["wall_s"]["heldout_build"] = round(time.perf_counter() - t, 1)

    t = time.perf_counter()
    for name in args.recipes:
        raw, notes = recipe_raw(base, name)
        raw["name"] += args.suffix
        console.rule(f"[bold]{raw['name']}")
        r = run_recipe(raw, args)
        r.update(design=list(design(validate(raw).model)), set=notes)
        res["recipes"][name] = r
        status = "ok" if r["rc"] == 0 else f"failed (rc {r['rc']})"
        console.print(f"[bold]{name}[/] {status} in {r['wall_s']:.0f} s")
    res["wall_s"]["recipes"] = round(time.perf_counter() - t, 1)

    uwm = res["recipes"].get("uwm")
    if uwm and uwm["rc"] == 0:
        t = time.perf_counter()
        res["uwm_dynamics"] = dynamics_gaps(Path(uwm["run_dir"]) / "export", RunPaths.of(heldout).data, args)
        res["wall_s"]["dynamics"] = round(time.perf_counter() - t, 1)
    res["wall_s"]["total"] = round(time.perf_counter() - started, 1)
    res["load_avg"] = [load_start, os.getloadavg()[0]]
    print_report(res)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=1, default=str) + "\n")
    console.print(f"written to {args.out}")


if __name__ == "__main__":
    main()
