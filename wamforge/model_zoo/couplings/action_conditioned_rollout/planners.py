"""Planners over an action-conditioned world model (survey §4.3.1, chunk-level rollout): candidate
chunks are proposed before the world model predicts their futures, every candidate is scored, and
the planner keeps or refits toward the best.

  cem       - the cross-entropy method, V-JEPA 2-AC's model-predictive control: sample around a
              Gaussian, keep the top-k elites, refit the Gaussian to them with momentum, repeat; the
              final mean is the plan (defaults: its 400 samples, 10 elites, 10 iterations, momentum 0.15);
  mppi      - model-predictive path integral, PointWorld's planner: sample around the mean and move it
              to the exponentially weighted mean of the samples, weight exp(score / temperature);
  best_of_n - draw N candidates (from an action source when one is given), keep the highest score
              (Cosmos-Policy's and DreamAvoid's selection).

One API for every coupling: `plan(score, shape, generator, device, propose) -> chunk [H, A]`.
`score(candidates [N, H, A]) -> [N]`, higher is better, is called once per iteration with all
candidates in one batch (a world model predicts their futures together). `propose(n) -> [n, H, A]`
draws the first candidates from an action source (a policy); without it they are drawn from
N(0, std) in normalized action space. Candidates are clipped to [-bound, bound].
"""
from __future__ import annotations

from typing import Annotated, Callable, Literal, Union

import torch
from pydantic import Field, model_validator

from wamforge.config.base import Strict

Score = Callable[[torch.Tensor], torch.Tensor]
Propose = Callable[[int], torch.Tensor]


class _Sampling(Strict):
    samples: int = Field(64, ge=1, description="candidate chunks scored per iteration")
    std: float = Field(1.0, gt=0, description="initial std of the Gaussian candidates, normalized action units")
    bound: float = Field(1.0, gt=0, description="candidates are clipped to [-bound, bound] in normalized space")


class CEMConfig(_Sampling):
    kind: Literal["cem"] = "cem"
    samples: int = Field(400, ge=1, description="candidate chunks scored per iteration")
    elites: int = Field(10, ge=1, description="top-k candidates the Gaussian is refit to")
    iterations: int = Field(10, ge=1)
    momentum: float = Field(0.15, ge=0, lt=1, description="share of the old mean and std kept at each refit")

    @model_validator(mode="after")
    def _elites_fit(self):
        if self.elites > self.samples:
            raise ValueError(f"planner.elites {self.elites} exceeds planner.samples {self.samples}: keep fewer elites")
        return self


class MPPIConfig(_Sampling):
    kind: Literal["mppi"] = "mppi"
    iterations: int = Field(4, ge=1)
    temperature: float = Field(0.1, gt=0, description="lambda: weights exp((score - max) / lambda)")


class BestOfNConfig(_Sampling):
    kind: Literal["best_of_n"] = "best_of_n"
    samples: int = Field(8, ge=1, description="N: candidate chunks drawn and scored once")


PlannerConfig = Annotated[Union[CEMConfig, MPPIConfig, BestOfNConfig], Field(discriminator="kind")]


class Planner:
    def __init__(self, cfg):
        self.cfg = cfg

    def plan(self, score: Score, shape: tuple[int, int], generator: torch.Generator | None = None,
             device=None, propose: Propose | None = None) -> torch.Tensor:
        """-> the planned chunk [H, A]."""
        raise NotImplementedError

    def _candidates(self, mean, std, generator, propose: Propose | None) -> torch.Tensor:
        """N clipped candidates [N, H, A]: from `propose` when given, else mean + std * noise."""
        n = self.cfg.samples
        if propose is not None:
            drawn = propose(n).to(mean.device, torch.float32)
            if drawn.shape != (n, *mean.shape):
                raise ValueError(f"propose({n}) must return candidates {[n, *mean.shape]}, got {list(drawn.shape)}")
        else:
            drawn = mean + std * torch.randn((n, *mean.shape), generator=generator, device=mean.device)
        return drawn.clamp(-self.cfg.bound, self.cfg.bound)

    @staticmethod
    def _scored(score: Score, candidates: torch.Tensor) -> torch.Tensor:
        scores = score(candidates)
        if scores.shape != (len(candidates),):
            raise ValueError(f"score must return one value per candidate, [{len(candidates)}], got {list(scores.shape)}")
        return scores.float()

    def _start(self, shape, device):
        mean = torch.zeros(shape, device=device)
        return mean, torch.full(shape, self.cfg.std, device=device)


class CEM(Planner):
    def plan(self, score, shape, generator=None, device=None, propose=None):
        keep = self.cfg.momentum
        mean, std = self._start(shape, device)
        for iteration in range(self.cfg.iterations):
            candidates = self._candidates(mean, std, generator, propose if iteration == 0 else None)
            elites = candidates[self._scored(score, candidates).topk(self.cfg.elites).indices]
            elite_std = elites.std(dim=0, unbiased=False)
            mean = keep * mean + (1 - keep) * elites.mean(dim=0)
            std = keep * std + (1 - keep) * elite_std
        return mean.clamp(-self.cfg.bound, self.cfg.bound)


class MPPI(Planner):
    def plan(self, score, shape, generator=None, device=None, propose=None):
        mean, std = self._start(shape, device)
        for iteration in range(self.cfg.iterations):
            candidates = self._candidates(mean, std, generator, propose if iteration == 0 else None)
            weights = torch.softmax(self._scored(score, candidates) / self.cfg.temperature, dim=0)
            mean = torch.einsum("n,nha->ha", weights, candidates)
        return mean


class BestOfN(Planner):
    def plan(self, score, shape, generator=None, device=None, propose=None):
        mean, std = self._start(shape, device)
        candidates = self._candidates(mean, std, generator, propose)
        return candidates[self._scored(score, candidates).argmax()]


PLANNERS = {"cem": CEM, "mppi": MPPI, "best_of_n": BestOfN}


def build_planner(cfg) -> Planner:
    return PLANNERS[cfg.kind](cfg)
