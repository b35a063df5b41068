"""Episodes in this process or in parallel on Ray: actors that each own the suite's environments
and their own copy of every controller, so a parallel run equals a serial one episode for episode."""
from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from wamforge.evaluation.controllers import REFERENCES, PolicyControl
from wamforge.evaluation.episodes import EpisodeSpec, run_episode
from wamforge.evaluation.suites import make_suite


class EpisodeWorker:
    """Owns one env per task (made on first use) and one controller per name.

    `controllers` maps a name to "expert" / "random", an export directory (loaded here, so each
    worker has its own copy) or a policy object (shipped to the worker as is)."""

    def __init__(self, suite_cfg, controllers: dict, camera: str, resolution: tuple[int, int], max_steps: int,
                 execute_steps: int, inference=None, threads: int | None = None):
        if threads:
            import torch

            torch.set_num_threads(threads)
        self.suite, self.camera, self.resolution = make_suite(suite_cfg), camera, tuple(resolution)
        self.max_steps, self.envs = max_steps, {}
        self.controllers = {name: self._controller(spec, execute_steps, inference) for name, spec in controllers.items()}

    @staticmethod
    def _controller(spec, execute_steps: int, inference):
        if isinstance(spec, str) and spec in REFERENCES:
            return REFERENCES[spec]()
        if isinstance(spec, (str, Path)):
            from wamforge.evaluation.policy import load_policy

            spec = load_policy(spec, device=None, inference=inference)
        return PolicyControl(spec, execute_steps)

    def run(self, spec: EpisodeSpec) -> dict:
        env = self.envs.get(spec.task)
        if env is None:
            env = self.envs[spec.task] = self.suite.make_env(spec.task, self.camera, self.resolution, self.max_steps)
        record = run_episode(env, self.controllers[spec.controller], spec, self.suite.instruction(spec.task),
                             self.max_steps)
        return {"controller": spec.controller, "group": self.suite.group(spec.task), **record}

    def close(self) -> None:
        for env in self.envs.values():
            env.close()
        self.envs.clear()


def run_episodes(specs: list[EpisodeSpec], worker_args: dict, workers: int = 1,
                 ray_address: str | None = None) -> Iterator[dict]:
    """Yield one record per spec as episodes finish (in spec order when serial)."""
    if workers == 1 and ray_address is None:
        worker = EpisodeWorker(**worker_args)
        try:
            for spec in specs:
                yield worker.run(spec)
        finally:
            worker.close()
        return
    yield from _on_ray(specs, worker_args, workers, ray_address)


@contextmanager
def ray_cluster(workers: int, address: str | None):
    """Connect to `address`, or start a local cluster of `workers` CPUs; one started here stops on
    exit. Already connected (a sweep holding one cluster for all its points): nothing to do."""
    import ray

    if ray.is_initialized() or (workers == 1 and address is None):
        yield
        return
    os.environ.setdefault("MUJOCO_GL", "egl")
    # "local": a cluster of our own, never one a `ray start` on this machine left behind
    ray.init(address=address or "local", num_cpus=None if address else workers, include_dashboard=False,
             logging_level="warning", configure_logging=True)
    try:
        yield
    finally:
        ray.shutdown()


def _on_ray(specs: list[EpisodeSpec], worker_args: dict, workers: int, address: str | None) -> Iterator[dict]:
    with ray_cluster(workers, address):
        yield from _pool(specs, worker_args, workers)


def _pool(specs: list[EpisodeSpec], worker_args: dict, workers: int) -> Iterator[dict]:
    import ray

    cpus = max(1, int(ray.cluster_resources().get("CPU", workers)) // workers)
    actor = ray.remote(num_cpus=1)(EpisodeWorker)
    args = {**worker_args, "threads": worker_args.get("threads") or cpus}
    pool = [actor.remote(**args) for _ in range(workers)]
    try:
        # one episode in flight per actor; the next spec goes to whichever actor frees first
        queue, running = list(reversed(specs)), {}

        def submit(worker) -> None:
            if queue:
                running[worker.run.remote(queue.pop())] = worker

        for worker in pool:
            submit(worker)
        while running:
            [done], _ = ray.wait(list(running), num_returns=1)
            worker = running.pop(done)
            submit(worker)
            yield ray.get(done)
    finally:
        for worker in pool:
            ray.kill(worker)


def ordered(records: list[dict], specs: list[EpisodeSpec]) -> list[dict]:
    """Records in spec order, whatever order the workers finished them in."""
    key: Callable[[dict], tuple] = lambda r: (r["controller"], r["task"], r["seed"], r["index"])
    position = {(s.controller, s.task, s.seed, s.index): i for i, s in enumerate(specs)}
    return sorted(records, key=lambda r: position[key(r)])
