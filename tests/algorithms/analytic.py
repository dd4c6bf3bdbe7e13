"""An ideal denoiser for Gaussian data, with the ``Denoiser`` interface.

If x_0 ~ N(μ, s² I) and x_t = √ᾱ x_0 + √(1−ᾱ) ε, then (x_0, ε, x_t) are jointly Gaussian
and the MMSE predictions are linear in d = x_t − √ᾱ μ, whose variance is v = ᾱ s² + 1 − ᾱ:

    ε̂(x_t) = E[ε | x_t]   = √(1−ᾱ) / v · d       (Cov(ε, x_t) = √(1−ᾱ))
    x̂₀(x_t) = E[x_0 | x_t] = μ + √ᾱ s² / v · d    (Cov(x_0, x_t) = √ᾱ s²)

(consistent: √ᾱ x̂₀ + √(1−ᾱ) ε̂ = x_t). For v-prediction the network would output
v̂ = √ᾱ ε̂ − √(1−ᾱ) x̂₀. Text enters through μ: the embedding of a prompt is a scalar c
in [−¼, ¼] (0 for the empty prompt) and μ = μ_base + c · region, so two prompts disagree exactly
inside ``region``.
"""

from __future__ import annotations

import math
import zlib

import torch

from engine.denoiser import Denoiser
from engine.models import SD15_SCHEDULER_CONFIG
from engine.schedule import Schedule


def schedule(prediction_type: str = "epsilon", **overrides) -> Schedule:
    return Schedule.from_config(
        {**SD15_SCHEDULER_CONFIG, "prediction_type": prediction_type, **overrides}
    )


class AnalyticDenoiser(Denoiser):
    """Closed-form ε/v-predictor for x_0 ~ N(μ_base + c·region, s² I)."""

    def __init__(self, sched: Schedule, mu: torch.Tensor, s: float, region=None):
        self.schedule = sched
        self.device = torch.device("cpu")
        self.dtype = torch.float32
        self._cache = {}
        self.unet_calls = 0
        self.xl = self.refiner = False  # one text encoder, no micro-conditioning
        self.mu, self.s = mu, s
        self.region = torch.zeros_like(mu) if region is None else region
        self.seen: list[tuple[int, torch.Tensor]] = []  # (t, x) of every model call
        self.record = False

    def encode_text(self, text: str) -> torch.Tensor:
        c = 0.0 if text == "" else (zlib.crc32(text.encode()) % 1000) / 2000.0 - 0.25
        return torch.full((1, 1, 1), c)

    def model_output(self, x: torch.Tensor, t: int, emb: torch.Tensor) -> torch.Tensor:
        assert t >= 0, "the model is never evaluated at the clean end"
        if self.record:
            self.seen.append((t, x.detach().clone()))
        if emb.shape[0] != x.shape[0]:
            emb = emb.expand(x.shape[0], -1, -1)
        c = emb.reshape(x.shape[0], -1).mean(1).view(-1, 1, 1, 1).to(x.dtype)
        mu = self.mu + c * self.region
        a = self.schedule.alpha(t)
        d = x - math.sqrt(a) * mu
        v = a * self.s**2 + 1 - a
        eps = math.sqrt(1 - a) / v * d
        if self.schedule.prediction_type == "epsilon":
            return eps
        x0 = mu + math.sqrt(a) * self.s**2 / v * d
        return math.sqrt(a) * eps - math.sqrt(1 - a) * x0
