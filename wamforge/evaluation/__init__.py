"""Closed-loop evaluation: exported policies driven by their deployment regime in registered
simulator suites, beside reference controllers and baselines on the same seeds, with the report
the field compares by (success with its interval, latency, memory, steps) and budget sweeps."""
from __future__ import annotations


def __getattr__(name):  # lazy: configs import the suites without loading simulators or torch
    if name == "evaluate":
        from wamforge.evaluation.closed_loop import evaluate

        return evaluate
    if name == "load_policy":
        from wamforge.evaluation.policy import load_policy

        return load_policy
    raise AttributeError(name)


__all__ = ["evaluate", "load_policy"]
