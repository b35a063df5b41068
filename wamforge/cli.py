"""`wamforge` entry point: data build, train, export, eval, run (all of them in order), plot, plan,
curriculum, and submit / jobs for SLURM and Ray clusters."""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import yaml
from rich.console import Console
from rich.table import Table

from wamforge.config import ConfigError, ExperimentConfig, load_config
from wamforge.config.baselines import BASELINES
from wamforge.config.paths import RunPaths

console = Console()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        if not hasattr(args, "config"):  # jobs, recipes, census: not about one experiment
            return args.func(args) or 0
        config = Path(args.config)
        if config.is_dir():  # a run directory: the resolved config training saved there
            config = config / "config.yaml"
        cfg = load_config(config, args.set, args.baseline)
        return args.func(cfg, args) or 0
    except ConfigError as err:
        console.print(f"[red]config error:[/] {err}", soft_wrap=True)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError, TimeoutError) as err:
        console.print(f"[red]error:[/] {err}", soft_wrap=True)
        return 1


# ----------------------------------------------------------------------------- commands

def cmd_build(cfg: ExperimentConfig, args) -> int:
    from wamforge.data_pipeline.build.pipeline import build_dataset

    build_dataset(cfg, ray_address=args.ray_address, force=args.force, console=console)
    return 0


def cmd_train(cfg: ExperimentConfig, args) -> int:
    from wamforge.launchers.local import launch_local
    from wamforge.training.engine import deepspeed_config
    from wamforge.training.preemption import PREEMPTED_EXIT

    deepspeed_config(cfg.training, cfg.training.world_size)  # a user's DeepSpeed JSON is checked before launch
    config_path = save_resolved(cfg)
    code = launch_local(config_path, cfg.training.world_size, cfg.training.threads_per_rank,
                        resume=args.resume, overwrite=args.overwrite)
    if code == PREEMPTED_EXIT:
        console.print(f"[yellow]stopped on request[/] at a checkpoint; continue with: "
                      f"wamforge train {args.config} --resume")
        return code
    if code:
        console.print(f"[red]training failed[/] (a rank exited with code {code}); "
                      f"resume with: wamforge train {args.config} --resume")
        return code
    from wamforge.training.plots import plot_training

    console.print(f"[green]trained[/]; loss curves in {plot_training(cfg)}")
    return 0


def cmd_export(cfg: ExperimentConfig, args) -> int:
    from wamforge.training.export import export

    out = export(cfg, out=args.out, ema=args.ema, dtype=args.dtype, format=args.format)
    console.print(f"[green]exported[/] {out}")
    return 0


def cmd_eval(cfg: ExperimentConfig, args) -> int:
    policy = Path(args.policy) if args.policy else RunPaths.of(cfg).export
    baselines = dict(_named_dir(item) for item in args.beside)
    if args.sweep:
        from wamforge.evaluation.budget import parse_sweeps, sweep

        out = RunPaths.of(cfg).eval / "budget"
        budget = sweep(cfg, parse_sweeps(args.sweep), lambda point, d: _evaluate(point, policy, d), out)
        console.print(f"[green]budget sweep[/] of {len(budget['points'])} points written to {out / 'budget.json'}")
        _print_budget(budget)
        return 0
    report = _evaluate(cfg, policy, baselines=baselines)
    console.print(f"[green]evaluation[/] written to {RunPaths.of(cfg).eval / 'report.json'}")
    _print_eval(report)
    return 0


def _named_dir(item: str) -> tuple[str, Path]:
    name, _, directory = item.partition("=")
    if not name or not directory:
        raise ValueError(f"--beside {item!r}: expected NAME=EXPORT_DIR, e.g. --beside no_future=runs/x-no_future/export")
    return name, Path(directory)


def cmd_run(cfg: ExperimentConfig, args) -> int:
    """build -> train (all stages) -> export -> eval, resuming whatever already exists."""
    from wamforge.data_pipeline.build.pipeline import build_dataset
    from wamforge.launchers.local import launch_local
    from wamforge.training.export import export
    from wamforge.training.metrics import stage_summary

    started = time.time()
    paths = RunPaths.of(cfg)
    build_dataset(cfg, ray_address=args.ray_address, console=console)
    code = launch_local(save_resolved(cfg), cfg.training.world_size, cfg.training.threads_per_rank,
                        resume=not args.overwrite, overwrite=args.overwrite)
    if code:
        console.print(f"[red]training failed[/] (exit {code}); rerun the same command to resume")
        return code
    from wamforge.training.plots import plot_training

    plot_training(cfg)
    export(cfg)
    report = _evaluate(cfg, paths.export)
    stages = [{"stage": s.name, **stage_summary(paths.stage(s.name) / "metrics.jsonl")} for s in cfg.stages]
    policy = report["controllers"]["policy"]["overall"]
    summary = {"stages": stages, "suite": report["suite"],
               "eval": {name: info["overall"] for name, info in report["controllers"].items()},
               "latency_ms": policy.get("latency_ms", {}), "peak_memory_mb": policy["peak_memory_mb"],
               "wall_seconds": round(time.time() - started, 1)}
    (paths.root / "summary.json").write_text(json.dumps(summary, indent=1))
    _print_summary(summary)
    return 0


def cmd_curriculum_plot(cfg: ExperimentConfig, args) -> int:
    from wamforge.training.plots import plot_curriculum

    console.print(f"[green]curricula[/] drawn in {plot_curriculum(cfg, Path(args.out))}")
    return 0


def cmd_plot(cfg: ExperimentConfig, args) -> int:
    from wamforge.training.plots import plot_training

    out = plot_training(cfg, Path(args.out) if args.out else None)
    if out is None:
        raise FileNotFoundError(f"{RunPaths.of(cfg).root} has no metrics.jsonl yet; train a stage first")
    console.print(f"[green]loss curves[/] drawn in {out}")
    return 0


def cmd_plan(cfg: ExperimentConfig, args) -> int:
    """Size the model for a world size, resolution and frame count before submitting; with --gpu-memory,
    the cheapest ZeRO stage, sequence-parallel degree and checkpointing that fit (training/plan.py)."""
    from wamforge.data_pipeline.sizing import loader_need, probe_decode, step_time_from_flops
    from wamforge.model_zoo.trunks.wan.sizes import WAN_SIZES
    from wamforge.training.plan import experiment_plan, fit, plan

    height, width = (int(v) for v in args.resolution.lower().split("x")) if args.resolution else cfg.data.resolution
    world_size = args.world_size or cfg.training.world_size
    sized = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "resolution": (height, width), "clip_frames": args.frames or cfg.data.clip_frames})})
    if args.size:
        if args.size not in WAN_SIZES:
            raise ValueError(f"unknown trunk size '{args.size}'; known: {', '.join(WAN_SIZES)}")
        result = plan(WAN_SIZES[args.size], sized.data.clip_frames, (height, width), world_size,
                      text_tokens=512, micro_batch=cfg.training.micro_batch_per_rank)  # umT5 captions, as Wan
    else:
        result = experiment_plan(sized, world_size)
    fitted = fit(result, args.gpu_memory) if args.gpu_memory else None
    # the data side: decode measured here (the built data's own loader, unless the clip is resized)
    step = args.step_time or step_time_from_flops(result.flops_train_step, args.gpu_tflops, args.mfu)
    probe = probe_decode(sized, built=not (args.frames or args.resolution))
    loader = loader_need(probe, cfg.training.micro_batch_per_rank, step)
    if args.json:
        console.print_json(json.dumps({**result.as_dict(), **({"fit": fitted.as_dict()} if fitted else {}),
                                       "loader": loader.as_dict()}))
        return 0
    from wamforge.training.plan_report import print_plan

    print_plan(console, f"plan: {args.size or cfg.name}, {sized.data.clip_frames} frames at {height}x{width}, "
                        f"{world_size} ranks, micro-batch {cfg.training.micro_batch_per_rank}",
               result, fitted, loader, args.gpus_per_node)
    return 0


def cmd_submit_slurm(cfg: ExperimentConfig, args) -> int:
    from wamforge.launchers import slurm

    jobs = slurm.submit(cfg, nodes=args.nodes, gpus_per_node=args.gpus_per_node, cpus_per_task=args.cpus_per_task,
                        partition=args.partition, account=args.account, time=args.time, qos=args.qos,
                        dry_run=args.dry_run, build_data=True if args.build else None, stages=args.stage)
    if args.dry_run:
        for job in jobs:
            console.print(f"[bold]# {job.script}[/]")
            console.print(job.text, markup=False, highlight=False, soft_wrap=True)
        return 0
    for job in jobs:
        after = f" after slurm:{job.after}" if job.after else ""
        console.print(f"[green]submitted[/] slurm:{job.job_id} {job.name}{after} ({job.script})")
    console.print(f"follow with: wamforge jobs status slurm:{jobs[-1].job_id}")
    return 0


def cmd_submit_ray(cfg: ExperimentConfig, args) -> int:
    from wamforge.launchers import ray_jobs

    config_path = save_resolved(cfg)
    if args.build or not (RunPaths.of(cfg).data / "manifest.json").exists():
        # Ray Jobs have no dependencies: the build finishes before the training job is submitted
        build = ray_jobs.submit_build(config_path, args.address, ship_code=args.ship_code)
        console.print(f"[green]submitted[/] ray:{build} (data build); waiting for it to finish")
        job = ray_jobs.wait(build, args.address)
        if job.state != "SUCCEEDED":
            console.print(f"[red]data build {job.state.lower()}[/]: {job.message}; see wamforge jobs logs ray:{build}")
            return 1
    job_id = ray_jobs.submit_training(config_path, args.address, workers=args.workers, stages=args.stage,
                                      max_failures=args.max_failures, ship_code=args.ship_code)
    console.print(f"[green]submitted[/] ray:{job_id} (training); follow with: "
                  f"wamforge jobs logs ray:{job_id} --address {args.address}")
    return 0


def cmd_recipes(args) -> int:
    """The recipes: paper, philosophy, the 4-tuple each builds, and whether it is its census row's."""
    from wamforge.config.recipes import recipe_rows
    from wamforge.model_zoo.census import recipes_table

    Console(width=max(console.width, 200)).print(recipes_table(recipe_rows()))
    return 0


def cmd_census(args) -> int:
    """The survey's census 4-tuples, each marked constructible (by which recipes) or not."""
    from wamforge.config.recipes import recipe_rows
    from wamforge.model_zoo.census import census_table, load_census

    constructible: dict[tuple, list[str]] = {}
    for row in recipe_rows():
        constructible.setdefault(row["design"], []).append(row["name"])
    Console(width=max(console.width, 200)).print(census_table(load_census(), constructible))
    return 0


def cmd_jobs(args) -> int:
    """status | logs | cancel of `slurm:ID` or `ray:ID`."""
    backend, _, _ = args.job.partition(":")
    if backend == "slurm":
        from wamforge.launchers import slurm as launcher

        call = (lambda f: f(args.job))
    elif backend == "ray":
        from wamforge.launchers import ray_jobs as launcher

        if not args.address:
            raise ValueError("a Ray job needs --address, the cluster's dashboard (e.g. http://HEAD:8265)")
        call = (lambda f: f(args.job, args.address))
    else:
        raise ValueError(f"'{args.job}' names no backend; job ids read slurm:ID or ray:ID")
    if args.action == "logs":
        console.print(call(launcher.logs), markup=False, highlight=False, end="")
    elif args.action == "cancel":
        call(launcher.cancel)
        console.print(f"[yellow]cancelled[/] {args.job}")
    else:
        job = call(launcher.status)
        console.print(f"{args.job}: [bold]{job.state}[/]" + "".join(
            f", {k} {v}" for k, v in _job_details(job).items() if v not in ("", None)))
    return 0


def _job_details(job) -> dict:
    fields = ("name", "reason", "exit_code", "restarts", "stdout", "message")
    return {f.replace("_", " "): getattr(job, f) for f in fields if hasattr(job, f)}


# ----------------------------------------------------------------------------- helpers

def save_resolved(cfg: ExperimentConfig) -> Path:
    """The fully resolved config, saved in the run directory; the rank processes read this copy."""
    path = RunPaths.of(cfg).root / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def _evaluate(cfg: ExperimentConfig, policy_dir: Path, out_dir: Path | None = None,
              baselines: dict | None = None) -> dict:
    from wamforge.evaluation import evaluate, load_policy

    source = cfg.data.sources[cfg.eval.source]
    # the knobs of this command's config (and its --set), not those the export was made with; in
    # parallel, each worker loads its own copy from the directory
    policy = policy_dir if cfg.eval.workers > 1 or cfg.eval.ray_address else \
        load_policy(policy_dir, inference=cfg.eval.inference())
    return evaluate(policy, cfg.eval, resolution=tuple(cfg.data.resolution), camera=source.camera,
                    out_dir=out_dir or RunPaths.of(cfg).eval, baselines=baselines, fps=cfg.data.fps)


def _print_eval(report: dict) -> None:
    table = Table(title=f"closed-loop evaluation on {report['suite']}")
    for col in ("controller", "success (95% interval)", "sustained horizon", "latency p50 / p95 (ms)", "failures"):
        table.add_column(col)
    for name, info in report.get("controllers", {}).items():
        o = info["overall"] if "overall" in info else info
        latency = o.get("latency_ms")
        table.add_row(name, f"{o['pc_success']:.0f}% [{o['interval'][0]:.0f}, {o['interval'][1]:.0f}]",
                      f"{o['sustained_horizon']:.1f}",
                      f"{latency['p50']:.1f} / {latency['p95']:.1f}" if latency else "-",
                      str(sum(o["failures"].values())))
    console.print(table)


def _print_budget(budget: dict) -> None:
    table = Table(title="accuracy at budget")
    for col in (*budget["grid"], "success", "latency p50 (ms)", "peak RSS (MiB)", "frontier"):
        table.add_column(col)
    for p in budget["points"]:
        latency = p["latency_ms"]["p50"] if p["latency_ms"] else float("nan")
        table.add_row(*(str(v) for v in p["settings"].values()),
                      f"refused: {p['refused']}" if p["refused"] else f"{p['pc_success']:.0f}%",
                      f"{latency:.1f}", f"{p['peak_memory_mb']:.0f}", "*" if p["on_frontier"] else "")
    console.print(table)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"training ({summary['wall_seconds']:.0f} s end to end)")
    for col in ("stage", "steps", "first loss", "last loss", "samples/s"):
        table.add_column(col)
    for s in summary["stages"]:
        table.add_row(s["stage"], str(s.get("steps", "-")), f"{s.get('first_loss', float('nan')):.4f}",
                      f"{s.get('last_loss', float('nan')):.4f}", f"{s.get('samples_per_s', float('nan')):.1f}")
    console.print(table)
    _print_eval({"suite": summary["suite"], "controllers": summary["eval"]})
    lat = summary.get("latency_ms", {})
    if lat:
        console.print(f"policy latency per chunk: p50 {lat.get('p50', float('nan')):.1f} ms, "
                      f"p95 {lat.get('p95', float('nan')):.1f} ms")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="wamforge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    def command(name, func, help_text, parent=sub):
        p = parent.add_parser(name, help=help_text)
        p.add_argument("config", help="experiment YAML (e.g. configs/experiments/quickstart.yaml) or a run directory")
        p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                       help="override a config value, e.g. --set training.world_size=1")
        p.add_argument("--baseline", choices=BASELINES, default=None,
                       help="the experiment's baseline at equal budget, run as <name>-<baseline>")
        p.set_defaults(func=func)
        return p

    data = sub.add_parser("data", help="dataset builds").add_subparsers(dest="data_command", required=True)
    p = command("build", cmd_build, "build WebDataset shards with Ray Data", data)
    p.add_argument("--ray-address", default=None, help="an existing Ray cluster (default: start a local one)")
    p.add_argument("--force", action="store_true", help="rebuild even if the manifest is up to date")

    p = command("train", cmd_train, "train every stage on DeepSpeed")
    p.add_argument("--resume", action="store_true", help="continue from the latest checkpoints")
    p.add_argument("--overwrite", action="store_true", help="start stages again over existing checkpoints")

    p = command("export", cmd_export, "export the last stage as a loadable policy")
    p.add_argument("--out", default=None)
    p.add_argument("--ema", action="store_true", help="the stage's EMA weights (training.ema_decay > 0)")
    p.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="weights as trained, or bf16 (half the size)")
    p.add_argument("--format", choices=["policy", "diffusers", "native"], default="policy",
                   help="one weights file, or the video trunk as a diffusers / native release folder beside the "
                        "WAM's own parts")

    p = command("eval", cmd_eval, "closed-loop evaluation of an exported policy")
    p.add_argument("--policy", default=None, help="export directory (default: runs/<name>/export)")
    p.add_argument("--beside", action="append", default=[], metavar="NAME=DIR",
                   help="another export (e.g. a baseline's) evaluated beside the policy on the same seeds")
    p.add_argument("--sweep", action="append", default=[], metavar="KEY=V1,V2",
                   help="accuracy at budget: evaluate every combination, e.g. --sweep eval.flow_steps=1,2,4,8")

    curriculum = sub.add_parser("curriculum", help="mixture curricula").add_subparsers(
        dest="curriculum_command", required=True)
    p = command("plot", cmd_curriculum_plot, "draw every stage's source weights over its steps", curriculum)
    p.add_argument("--out", required=True, help="PNG file to write")

    p = command("plot", cmd_plot, "draw a run's loss curves per stage and source, and its mixture shares")
    p.add_argument("--out", default=None, help="PNG file to write (default: <run>/training.png)")

    p = command("plan", cmd_plan, "parameters, FLOPs and memory per GPU before submitting")
    p.add_argument("--size", default=None, help="a named trunk size instead of the config's, e.g. wan2.1-14b")
    p.add_argument("--world-size", type=int, default=None)
    p.add_argument("--frames", type=int, default=None, help="video frames per sample (1 + 4k)")
    p.add_argument("--resolution", default=None, help="HEIGHTxWIDTH in pixels, e.g. 480x832")
    p.add_argument("--gpu-memory", type=float, default=None, metavar="GIB",
                   help="pick the cheapest setting that fits this much memory per GPU")
    p.add_argument("--step-time", type=float, default=None, metavar="S",
                   help="seconds per micro-batch on a GPU, for the loader cores (default: the plan's FLOPs at --mfu)")
    p.add_argument("--gpu-tflops", type=float, default=989.0, help="dense bf16 peak per GPU (H100/H200: 989)")
    p.add_argument("--mfu", type=float, default=0.4, help="utilisation assumed for the step time")
    p.add_argument("--gpus-per-node", type=int, default=8)
    p.add_argument("--json", action="store_true")

    submit = sub.add_parser("submit", help="submit to a cluster").add_subparsers(dest="backend", required=True)
    p = command("slurm", cmd_submit_slurm, "sbatch jobs: a data build if needed, then one job per stage", submit)
    p.add_argument("--nodes", type=int, default=1)
    p.add_argument("--gpus-per-node", type=int, default=0, help="one rank per GPU (0: CPU ranks, training.world_size)")
    p.add_argument("--cpus-per-task", type=int, default=1)
    for flag in ("--partition", "--account", "--time", "--qos"):
        p.add_argument(flag, default=None)
    p.add_argument("--stage", action="append", default=None, help="submit only this stage (repeatable)")
    p.add_argument("--build", action="store_true", help="build the data first even if it exists")
    p.add_argument("--dry-run", action="store_true", help="print the scripts, submit nothing")
    p = command("ray", cmd_submit_ray, "Ray Jobs: a data build if needed, then Ray Train", submit)
    p.add_argument("--address", required=True, help="the cluster's dashboard, e.g. http://HEAD:8265")
    p.add_argument("--workers", type=int, default=None, help="ranks (default: training.world_size)")
    p.add_argument("--max-failures", type=int, default=3, help="restarts from the latest checkpoint")
    p.add_argument("--stage", action="append", default=None, help="train only this stage (repeatable)")
    p.add_argument("--build", action="store_true", help="build the data first even if it exists")
    p.add_argument("--ship-code", action="store_true", help="upload this checkout's wamforge package")

    sub.add_parser("recipes", help="the published WAMs wamforge builds, with their census 4-tuples").set_defaults(
        func=cmd_recipes)
    sub.add_parser("census", help="the survey's 44 census 4-tuples, marked constructible or not").set_defaults(
        func=cmd_census)

    p = sub.add_parser("jobs", help="status, logs or cancel of a submitted job")
    p.add_argument("action", choices=["status", "logs", "cancel"])
    p.add_argument("job", help="slurm:ID or ray:ID, as submit printed it")
    p.add_argument("--address", default=None, help="Ray jobs: the cluster's dashboard")
    p.set_defaults(func=cmd_jobs)

    p = command("run", cmd_run, "build, train, export and evaluate in one go")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--overwrite", action="store_true", help="train every stage again instead of resuming")
    return parser


if __name__ == "__main__":
    sys.exit(main())
