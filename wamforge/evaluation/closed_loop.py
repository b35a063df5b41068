"""`evaluate`: a policy, any baselines and the reference controllers on one suite's tasks, the same
seeded layouts for all, in this process or on Ray; writes the report, its plot and the videos."""
from __future__ import annotations

import json
import time
from pathlib import Path

from rich.progress import Progress

from wamforge.config.evaluation import EvalConfig
from wamforge.evaluation.episodes import EpisodeSpec
from wamforge.evaluation.report import eval_info, plot_report
from wamforge.evaluation.runner import ordered, run_episodes
from wamforge.evaluation.suites import make_suite


def evaluate(policy, cfg: EvalConfig, resolution: tuple[int, int] = (64, 64), camera: str = "corner",
             out_dir: str | Path = ".", baselines: dict | None = None, fps: float = 10.0) -> dict:
    """Run `policy` (an export directory or a policy object; None: references only), each of
    `baselines` ({name: directory or policy}) and cfg.references on every task x seed x episode.

    Writes out_dir/report.json (every controller), eval_info.json (the policy's, in LeRobot's
    layout), report.png and videos/; returns the report."""
    suite = make_suite(cfg.suite)
    tasks, max_steps = suite.tasks(), cfg.max_steps or suite.default_max_steps
    controllers = {**({"policy": policy} if policy is not None else {}), **(baselines or {}),
                   **{name: name for name in cfg.references}}
    specs = [EpisodeSpec(name, task, seed, index,
                         record_frames=name not in cfg.references and index < cfg.videos and seed == cfg.seeds[0])
             for name in controllers for task in tasks for seed in cfg.seeds for index in range(cfg.episodes)]
    worker_args = {"suite_cfg": cfg.suite, "controllers": controllers, "camera": camera, "resolution": resolution,
                   "max_steps": max_steps, "execute_steps": cfg.execute_steps, "inference": cfg.inference()}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    started, records = time.time(), []
    with Progress() as progress:
        bar = progress.add_task(f"evaluating on {suite.label}", total=len(specs))
        for record in run_episodes(specs, worker_args, cfg.workers, cfg.ray_address):
            _save_video(record, out_dir, fps)
            records.append(record)
            progress.update(bar, advance=1, description=f"{record['controller']} · {record['task']}")
    records = ordered(records, specs)

    report = {
        "suite": suite.label, "tasks": tasks,
        "protocol": {"episodes": cfg.episodes, "seeds": cfg.seeds, "max_steps": max_steps,
                     "execute_steps": cfg.execute_steps, "workers": cfg.workers},
        "wall_seconds": time.time() - started,
        "inference": cfg.inference().as_dict(),  # the controller's knobs the policies ran with
        "camera": camera, "resolution": list(resolution), "config": cfg.model_dump(mode="json"),
        "controllers": {name: eval_info([r for r in records if r["controller"] == name], tasks)
                        for name in controllers},
    }
    for name, info in report["controllers"].items():
        if name not in cfg.references:  # what a policy's success costs
            info["overall"].update(execute_steps=cfg.execute_steps, denoising_steps=cfg.inference().as_dict())
    if policy is not None and cfg.future_windows:
        report["futures"] = _futures(policy, suite, tasks, cfg, camera, resolution, max_steps, out_dir, fps)
    (out_dir / "report.json").write_text(json.dumps(report, indent=1))
    if "policy" in report["controllers"]:
        (out_dir / "eval_info.json").write_text(json.dumps(report["controllers"]["policy"], indent=1))
    plot_report(report, out_dir / "report.png")
    return report


def _futures(policy, suite, tasks, cfg: EvalConfig, camera, resolution, max_steps, out_dir: Path, fps) -> dict:
    """Predicted futures and open-loop action error on held-out layouts (the evaluation seed's) and
    on the training layouts (the evaluated source's seed), for a policy that can `imagine`."""
    from wamforge.evaluation.futures import score_windows
    from wamforge.evaluation.policy import load_policy

    if isinstance(policy, (str, Path)):
        policy = load_policy(policy, inference=cfg.inference())
    if not hasattr(policy, "imagine"):
        return {}
    futures = {"held_out": score_windows(policy, suite, tasks, cfg.future_windows, cfg.seeds[0], camera,
                                         resolution, max_steps, out_dir, fps)}
    source = policy.cfg.data.sources.get(cfg.source)
    if source is not None and source.format == suite.name:  # its demos came from this suite's scripted expert
        futures["training"] = score_windows(policy, suite, tasks, cfg.future_windows, source.seed, camera,
                                            resolution, max_steps)
    return futures


def _save_video(record: dict, out_dir: Path, fps: float) -> None:
    frames = record.pop("frames", None)
    if frames is None:
        return
    from wamforge.evaluation.videos import episode_video, write_mp4

    path = Path("videos") / record["controller"] / f"{record['task']}_{record['episode_seed']}.mp4"
    (out_dir / path).parent.mkdir(parents=True, exist_ok=True)
    write_mp4(out_dir / path, episode_video(frames), fps)
    record["video"] = str(path)
