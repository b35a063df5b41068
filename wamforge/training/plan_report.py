"""`wamforge plan` as the user reads it: the plan's table, the settings tried for a GPU memory, and
the loader cores the data side needs."""
from __future__ import annotations

from rich.console import Console
from rich.table import Table

from wamforge.data_pipeline.sizing import LoaderNeed, cores_to_order
from wamforge.training.plan import Fit, Plan

FLOPS = [" ", " K", " M", " G", " T", " P"]


def print_plan(console: Console, title: str, result: Plan, fitted: Fit | None, loader: LoaderNeed,
               gpus_per_node: int) -> None:
    table = Table(title=title)
    table.add_column("quantity")
    table.add_column("value", justify="right")
    rows = [("parameters", scaled(result.params, 1000, ["", " K", " M", " B"])),
            ("tokens per sample", f"{result.tokens:,}")]
    if result.objective:  # an experiment's own step: its streams beyond the video, and what was counted
        rows += [("  of which the clip's video", f"{result.video_tokens:,}"),
                 ("objective counted", result.objective)]
    rows += [("forward FLOPs per micro-batch", scaled(result.flops_forward, 1000, FLOPS)),
             ("train FLOPs per micro-batch", scaled(result.flops_train_step, 1000, FLOPS))]
    if result.flops_train_step_checkpointed:
        rows += [("  with checkpointing", scaled(result.flops_train_step_checkpointed, 1000, FLOPS))]
    rows += [("activations per rank", size(result.activation_bytes)),
             ("activations, checkpointed", size(result.activation_bytes_checkpointed))]
    rows += [(f"model states per rank, {k.replace('zero', 'ZeRO-')}", size(v))
             for k, v in result.model_state_bytes.items()]
    for row in rows:
        table.add_row(*row)
    console.print(table)
    if fitted:
        candidates = Table(title=f"settings tried for {fitted.gpu_bytes / 2**30:g} GiB, cheapest first")
        for column in ("ckpt", "ZeRO", "SP", "states", "activations", "margin", "total", "fits"):
            candidates.add_column(column, justify="right")
        for s in fitted.considered:
            candidates.add_row("on" if s.activation_checkpointing else "off", str(s.zero_stage), str(s.sequence_parallel),
                               size(s.model_state_bytes), size(s.activation_bytes), size(s.margin_bytes),
                               size(s.total_bytes), "yes" if fitted.fits(s) else "no")
        console.print(candidates)
        console.print(fitted.message)
        for line in fitted.chosen.config_lines() if fitted.chosen else []:
            console.print(f"  {line}", markup=False, highlight=False)
    console.print(f"data: {loader.message}", markup=False, highlight=False)
    console.print(f"  a node of {gpus_per_node} GPUs sets aside {cores_to_order(loader, gpus_per_node)} "
                  f"cores for its loaders (training.loader_workers: {loader.workers_per_rank} per rank)",
                  markup=False, highlight=False)


def scaled(value: float, base: int, units: list[str]) -> str:
    for unit in units[:-1]:
        if abs(value) < base:
            return f"{value:,.1f}{unit}"
        value /= base
    return f"{value:,.1f}{units[-1]}"


def size(value: float) -> str:
    return scaled(value, 1024, [" B", " KiB", " MiB", " GiB", " TiB"])
