"""Safetensors checkpoints on disk, shared by every module's weight loader: find the tensors of a
file, a sharded index or a folder; copy them into a model by a name map, strictly and with a report
(into ZeRO-3 partitioned parameters too); write one file or shards with an index."""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from wamforge.model_zoo.common.partitions import full_shape, whole


@dataclass
class LoadReport:
    layout: str
    loaded: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)  # model parameters the checkpoint lacks
    unexpected: list[str] = field(default_factory=list)  # checkpoint tensors with no parameter
    mismatched: list[str] = field(default_factory=list)  # "name: checkpoint shape vs model shape"
    dropped: list[str] = field(default_factory=list)  # known release-only tensors, skipped on purpose

    @property
    def complete(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def problems(self) -> str:
        # a checkpoint of another size misfits in every block: the first few name the problem
        parts = [f"{label} ({len(names)}): {', '.join(names[:6])}{', ...' if len(names) > 6 else ''}"
                 for label, names in
                 (("missing", self.missing), ("unexpected", self.unexpected), ("shape mismatch", self.mismatched))
                 if names]
        return "; ".join(parts)


def checkpoint_files(path: str | Path) -> dict[str, Path]:
    """{tensor name: shard file} for a file, a sharded index or a folder holding one of them."""
    path = Path(path)
    if path.is_dir():
        candidates = sorted(path.glob("*.safetensors.index.json")) or sorted(path.glob("*.safetensors"))
        if len(candidates) != 1:
            raise FileNotFoundError(f"{path} must hold exactly one safetensors index or file, found "
                                    f"{[c.name for c in candidates]}")
        path = candidates[0]
    if path.name.endswith(".index.json"):
        weight_map = json.loads(path.read_text())["weight_map"]
        return {name: path.parent / shard for name, shard in weight_map.items()}
    if path.suffix != ".safetensors":
        raise ValueError(f"{path}: only safetensors checkpoints are read")
    with safe_open(path, framework="pt") as handle:
        return {name: path for name in handle.keys()}


def load_named(model: nn.Module, files: dict[str, Path], stored: dict[str, str], targets: dict[str, str],
               report: LoadReport, source: str | Path, partial: bool = False) -> LoadReport:
    """Copy checkpoint tensors into `model`, each cast to its parameter's dtype. `files`: {stored
    name: shard}; `stored`: {canonical name: stored name} for the tensors meant for the model;
    `targets`: {canonical name: model parameter}. Missing, unexpected or mis-shaped tensors raise a
    KeyError naming them before anything is copied; with partial=True the rest is loaded and the
    report lists what was skipped."""
    state = model.state_dict(keep_vars=True)  # the parameters themselves: partitioned ones are gathered
    report.missing = sorted(targets[name] for name in targets.keys() - stored.keys())
    report.unexpected = sorted(stored[name] for name in stored.keys() - targets.keys())
    by_file: dict[Path, list[str]] = {}
    for name in sorted(stored.keys() & targets.keys()):
        by_file.setdefault(files[stored[name]], []).append(name)
    skipped = set()
    for file, group in by_file.items():
        with safe_open(file, framework="pt") as handle:
            for name in group:
                shape, wanted = tuple(handle.get_slice(stored[name]).get_shape()), full_shape(state[targets[name]])
                if shape != wanted:
                    report.mismatched.append(f"{stored[name]}: {shape} vs {wanted}")
                    skipped.add(name)
    report.mismatched.sort()
    if not report.complete and not partial:
        raise KeyError(f"{source} does not fit the model ({report.layout} layout): {report.problems()}")
    with torch.no_grad():
        for file, group in by_file.items():
            with safe_open(file, framework="pt") as handle:
                for name in group:
                    if name not in skipped:
                        target = state[targets[name]]
                        with whole([target]):
                            target.copy_(handle.get_tensor(stored[name]))
                        report.loaded.append(targets[name])
    return report


def write_safetensors(tensors: dict[str, torch.Tensor], directory: str | Path, stem: str,
                      max_shard_bytes: int | None = None) -> Path:
    """Write `<stem>.safetensors`, or with max_shard_bytes the shards `<stem>-0000i-of-0000n.safetensors`
    and `<stem>.safetensors.index.json`, as diffusers and the model releases name them. Returns the
    file to load back."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    if max_shard_bytes is None:
        target = directory / f"{stem}.safetensors"
        save_file(tensors, target, metadata={"format": "pt"})
        return target
    shards: list[dict[str, torch.Tensor]] = [{}]
    shard_bytes = 0
    for name, tensor in tensors.items():
        size = tensor.numel() * tensor.element_size()
        if shards[-1] and shard_bytes + size > max_shard_bytes:
            shards.append({})
            shard_bytes = 0
        shards[-1][name] = tensor
        shard_bytes += size
    weight_map = {}
    for index, shard in enumerate(shards, start=1):
        shard_name = f"{stem}-{index:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, directory / shard_name, metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, shard_name))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    target = directory / f"{stem}.safetensors.index.json"
    target.write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return target
