"""`wamforge` entry point: data build, train, export, eval, run (all of them in order), plan, curriculum."""
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
from wamforge.config.paths import RunPaths

console = Console()


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        config = Path(args.config)
        if config.is_dir():  # a run directory: the resolved config training saved there
            config = config / "config.yaml"
        cfg = load_config(config, args.set)
        return args.func(cfg, args) or 0
    except ConfigError as err:
        console.print(f"[red]config error:[/] {err}", soft_wrap=True)
        return 2
    except (FileNotFoundError, ValueError, RuntimeError) as err:
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

    out = export(cfg, out=args.out, ema=args.ema)
    console.print(f"[green]exported[/] {out}")
    return 0


def cmd_eval(cfg: ExperimentConfig, args) -> int:
    report = _evaluate(cfg, Path(args.policy) if args.policy else RunPaths.of(cfg).export)
    console.print(f"[green]evaluation[/] written to {RunPaths.of(cfg).eval / 'report.json'}")
    _print_eval(report)
    return 0


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
    policy = report["controllers"].get("policy", {})
    summary = {"stages": stages, "eval": report["controllers"], "latency_ms": policy.get("latency_ms", {}),
               "peak_memory_mb": policy.get("peak_memory_mb", {}), "wall_seconds": round(time.time() - started, 1)}
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
    """Size the trunk for a world size, resolution and frame count before submitting."""
    from wamforge.model_zoo.trunks.wan_sizes import WAN_SIZES
    from wamforge.training.plan import experiment_plan, plan

    height, width = (int(v) for v in args.resolution.lower().split("x")) if args.resolution else cfg.data.resolution
    world_size = args.world_size or cfg.training.world_size
    if args.size:
        if args.size not in WAN_SIZES:
            raise ValueError(f"unknown trunk size '{args.size}'; known: {', '.join(WAN_SIZES)}")
        result = plan(WAN_SIZES[args.size], args.frames or cfg.data.clip_frames, (height, width), world_size,
                      text_tokens=512, micro_batch=cfg.training.micro_batch_per_rank)  # umT5 captions, as Wan
    else:
        data = cfg.data.model_copy(update={"resolution": (height, width),
                                           "clip_frames": args.frames or cfg.data.clip_frames})
        result = experiment_plan(cfg.model_copy(update={"data": data}), world_size)
    if args.json:
        console.print_json(json.dumps(result.as_dict()))
        return 0
    table = Table(title=f"plan: {args.size or cfg.name + ' trunk'}, {args.frames or cfg.data.clip_frames} frames "
                        f"at {height}x{width}, {args.world_size or cfg.training.world_size} ranks, "
                        f"micro-batch {cfg.training.micro_batch_per_rank}")
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [("parameters", _scaled(result.params, 1000, ["", " K", " M", " B"])),
            ("tokens per sample", f"{result.tokens:,}"),
            ("forward FLOPs per micro-batch", _scaled(result.flops_forward, 1000, [" ", " K", " M", " G", " T", " P"])),
            ("train FLOPs per micro-batch", _scaled(result.flops_train_step, 1000, [" ", " K", " M", " G", " T", " P"])),
            ("activations per rank", _bytes(result.activation_bytes)),
            ("activations, checkpointed", _bytes(result.activation_bytes_checkpointed))]
    rows += [(f"model states per rank, {k.replace('zero', 'ZeRO-')}", _bytes(v))
             for k, v in result.model_state_bytes.items()]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    return 0


# ----------------------------------------------------------------------------- helpers

def _scaled(value: float, base: int, units: list[str]) -> str:
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:,.1f}{unit}"
        value /= base
    return f"{value:,.1f}{units[-1]}"


def _bytes(value: float) -> str:
    return _scaled(value, 1024, [" B", " KiB", " MiB", " GiB", " TiB"])


def save_resolved(cfg: ExperimentConfig) -> Path:
    """The fully resolved config, saved in the run directory; the rank processes read this copy."""
    path = RunPaths.of(cfg).root / "config.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
    return path


def _evaluate(cfg: ExperimentConfig, policy_dir: Path) -> dict:
    from wamforge.training.evaluate import evaluate
    from wamforge import load_policy

    source = cfg.data.sources[cfg.eval.source]
    return evaluate(load_policy(policy_dir), cfg.eval, resolution=tuple(cfg.data.resolution),
                    camera=source.camera, out_dir=RunPaths.of(cfg).eval)


def _print_eval(report: dict) -> None:
    table = Table(title="closed-loop evaluation")
    for col in ("controller", "success rate", "mean episode length"):
        table.add_column(col)
    for name, c in report.get("controllers", {}).items():
        table.add_row(name, f"{c['success_rate']:.2f}", f"{c['mean_episode_length']:.1f}")
    console.print(table)


def _print_summary(summary: dict) -> None:
    table = Table(title=f"training ({summary['wall_seconds']:.0f} s end to end)")
    for col in ("stage", "steps", "first loss", "last loss", "samples/s"):
        table.add_column(col)
    for s in summary["stages"]:
        table.add_row(s["stage"], str(s.get("steps", "-")), f"{s.get('first_loss', float('nan')):.4f}",
                      f"{s.get('last_loss', float('nan')):.4f}", f"{s.get('samples_per_s', float('nan')):.1f}")
    console.print(table)
    _print_eval({"controllers": summary["eval"]})
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

    p = command("eval", cmd_eval, "closed-loop evaluation of an exported policy")
    p.add_argument("--policy", default=None, help="export directory (default: runs/<name>/export)")

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
    p.add_argument("--json", action="store_true")

    p = command("run", cmd_run, "build, train, export and evaluate in one go")
    p.add_argument("--ray-address", default=None)
    p.add_argument("--overwrite", action="store_true", help="train every stage again instead of resuming")
    return parser


if __name__ == "__main__":
    sys.exit(main())
