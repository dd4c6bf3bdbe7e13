"""Noise-schedule math: alphas_cumprod, timestep selection, DDIM/DDPM steps, q-sampling.

Notation follows DDPM (Ho et al. 2020): ``a_t`` is ᾱ_t = Π(1 − β_s), so
q(x_t | x_0) = N(√ᾱ_t x_0, (1 − ᾱ_t) I). Timestep ``-1`` means "the clean end of the chain"
and uses ``final_alpha_cumprod`` (1.0, or ᾱ_0 when a config says ``set_alpha_to_one: false``).

Every step function takes plain tensors and timesteps and returns tensors: no state, so
algorithms can run the chain forwards, backwards, or jump around it (RePaint, inversion).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

PREDICTION_TYPES = ("epsilon", "v_prediction")


def betas_from_config(config: Mapping[str, Any]) -> np.ndarray:
    """β_1..β_T as float64, for the schedules SD-class checkpoints use."""
    n = int(config.get("num_train_timesteps", 1000))
    if config.get("trained_betas") is not None:
        return np.asarray(config["trained_betas"], dtype=np.float64)
    start = float(config.get("beta_start", 0.00085))
    end = float(config.get("beta_end", 0.012))
    kind = config.get("beta_schedule", "scaled_linear")
    if kind == "linear":
        return np.linspace(start, end, n, dtype=np.float64)
    if kind == "scaled_linear":  # latent diffusion: linear in √β
        return np.linspace(start**0.5, end**0.5, n, dtype=np.float64) ** 2
    if kind == "squaredcos_cap_v2":  # Nichol & Dhariwal 2021, eq. 17
        f = [math.cos((i / n + 0.008) / 1.008 * math.pi / 2) ** 2 for i in range(n + 1)]
        return np.array([min(1 - f[i + 1] / f[i], 0.999) for i in range(n)], dtype=np.float64)
    raise ValueError(f"unsupported beta_schedule {kind!r}")


def rescale_zero_terminal_snr(alphas_cumprod: np.ndarray) -> np.ndarray:
    """Lin et al. 2023 ("Common Diffusion Noise Schedules are Flawed"), Algorithm 1."""
    s = np.sqrt(alphas_cumprod)
    s0, st = s[0], s[-1]
    s = (s - st) * s0 / (s0 - st)
    return s**2


@dataclass(frozen=True)
class Schedule:
    """A discrete diffusion schedule read from a diffusers scheduler config."""

    alphas_cumprod: np.ndarray  # float64, length T
    final_alpha_cumprod: float
    timestep_spacing: str = "leading"
    steps_offset: int = 0
    prediction_type: str = "epsilon"

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> Schedule:
        betas = betas_from_config(config)
        ac = np.cumprod(1.0 - betas)
        if config.get("rescale_betas_zero_snr", False):
            ac = rescale_zero_terminal_snr(ac)
            ac[-1] = 4.8973451890853435e-08  # as diffusers: keep the last step finite
        pred = config.get("prediction_type", "epsilon")
        if pred not in PREDICTION_TYPES:
            raise ValueError(f"unsupported prediction_type {pred!r}; expected {PREDICTION_TYPES}")
        return cls(
            alphas_cumprod=ac,
            final_alpha_cumprod=1.0 if config.get("set_alpha_to_one", True) else float(ac[0]),
            timestep_spacing=config.get("timestep_spacing", "leading"),
            steps_offset=int(config.get("steps_offset", 0)),
            prediction_type=pred,
        )

    @property
    def num_train_timesteps(self) -> int:
        return len(self.alphas_cumprod)

    def alpha(self, t: int) -> float:
        """ᾱ_t, with t = −1 meaning the clean end."""
        return self.final_alpha_cumprod if t < 0 else float(self.alphas_cumprod[int(t)])

    # ---- timestep selection -----------------------------------------------------------

    def timesteps(self, n: int) -> list[int]:
        """The n sampling timesteps, descending (Lin et al. 2023, Table 2 spacings)."""
        if n < 1:
            raise ValueError("need at least one step")
        T = self.num_train_timesteps
        n = min(n, T)
        if self.timestep_spacing == "linspace":
            ts = np.linspace(0, T - 1, n).round()[::-1]
        elif self.timestep_spacing == "leading":
            ts = (np.arange(n) * (T // n)).round()[::-1] + self.steps_offset
        elif self.timestep_spacing == "trailing":
            ts = np.round(np.arange(T, 0, -T / n)) - 1
        else:
            raise ValueError(f"unsupported timestep_spacing {self.timestep_spacing!r}")
        return [int(t) for t in ts]

    @staticmethod
    def steps_for_strength(n: int, strength: float) -> int:
        """How many of n steps an edit of this strength runs (SDEdit's t0 = strength).

        Matches diffusers' img2img (``int(n * strength)``) but without its float
        truncation (0.29 * 100 gives 28 there, 29 here), and runs at least one step
        for any strength > 0 so a small strength still does something.
        """
        if not 0.0 <= strength <= 1.0:
            raise ValueError(f"strength must be in [0, 1], got {strength}")
        k = min(int(n * strength + 1e-6), n)
        return max(k, 1) if strength > 0 else 0

    def timesteps_for_strength(self, n: int, strength: float) -> list[int]:
        """The tail of ``timesteps(n)`` an edit of this strength runs through."""
        k = self.steps_for_strength(n, strength)
        return self.timesteps(n)[n - k :] if k else []

    # ---- conversions between parameterisations (Salimans & Ho 2022, §4 and App. D) ----

    def x0_from_eps(self, x_t: torch.Tensor, eps: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alpha(t)  # DDPM eq. 4 solved for x_0
        return (x_t - math.sqrt(1 - a) * eps) / math.sqrt(a)

    def eps_from_x0(self, x_t: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alpha(t)
        return (x_t - math.sqrt(a) * x0) / math.sqrt(1 - a)

    def v_from_eps_x0(self, eps: torch.Tensor, x0: torch.Tensor, t: int) -> torch.Tensor:
        a = self.alpha(t)  # v = α ε − σ x_0
        return math.sqrt(a) * eps - math.sqrt(1 - a) * x0

    def eps_x0(self, model_output: torch.Tensor, x_t: torch.Tensor, t: int):
        """(ε̂, x̂₀) from a network output of this schedule's prediction type."""
        if self.prediction_type == "epsilon":
            return model_output, self.x0_from_eps(x_t, model_output, t)
        a = self.alpha(t)  # v-prediction: x_0 = α x_t − σ v, ε = σ x_t + α v
        sa, sb = math.sqrt(a), math.sqrt(1 - a)
        return sb * x_t + sa * model_output, sa * x_t - sb * model_output

    # ---- forward process -----------------------------------------------------------------

    def q_sample(self, x0: torch.Tensor, t: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_0) (Ho et al. 2020, eq. 4)."""
        a = self.alpha(t)
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * noise

    def q_step(self, x_s: torch.Tensor, s: int, t: int, noise: torch.Tensor) -> torch.Tensor:
        """x_t ~ q(x_t | x_s) for s < t: the forward chain over several steps at once
        (Ho et al. 2020, eq. 2 composed; RePaint's "jump back" with s = t − j)."""
        if t <= s:
            raise ValueError("q_step goes forwards: need t > s")
        r = self.alpha(t) / self.alpha(s)
        return math.sqrt(r) * x_s + math.sqrt(1 - r) * noise

    # ---- reverse steps -------------------------------------------------------------------

    def ddim_sigma(self, t: int, t_prev: int, eta: float) -> float:
        """σ_t of DDIM (Song et al. 2021, eq. 16); η = 1 is DDPM's posterior std."""
        a, ap = self.alpha(t), self.alpha(t_prev)
        return eta * math.sqrt((1 - ap) / (1 - a)) * math.sqrt(1 - a / ap)

    def ddim_step(
        self,
        x0: torch.Tensor,
        eps: torch.Tensor,
        t: int,
        t_prev: int,
        eta: float = 0.0,
        noise: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x_{t_prev} from x̂₀ and ε̂ at t (Song et al. 2021, eq. 12)."""
        ap = self.alpha(t_prev)
        sigma = self.ddim_sigma(t, t_prev, eta) if eta > 0 else 0.0
        # 1. "predicted x_0" scaled to t_prev, 2. "direction pointing to x_t", 3. random noise
        out = math.sqrt(ap) * x0 + math.sqrt(max(1 - ap - sigma**2, 0.0)) * eps
        if sigma > 0:
            if noise is None:
                raise ValueError("eta > 0 needs noise")
            out = out + sigma * noise
        return out

    def ddim_inverse_step(self, x0: torch.Tensor, eps: torch.Tensor, t_next: int) -> torch.Tensor:
        """Deterministic DDIM run backwards, x_t → x_{t_next} with t_next > t, re-using ε̂
        predicted at x_t (Song et al. 2021, eq. 13 read as an ODE; Mokady et al. 2022, §3)."""
        a = self.alpha(t_next)
        return math.sqrt(a) * x0 + math.sqrt(1 - a) * eps

    def ddpm_posterior(self, x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int):
        """Mean and std of q(x_{t_prev} | x_t, x_0) (Ho et al. 2020, eqs. 6–7), for any stride."""
        a, ap = self.alpha(t), self.alpha(t_prev)
        beta = 1 - a / ap  # the effective β over the stride
        mean = (math.sqrt(ap) * beta / (1 - a)) * x0 + (
            math.sqrt(a / ap) * (1 - ap) / (1 - a)
        ) * x_t
        std = math.sqrt(beta * (1 - ap) / (1 - a))
        return mean, std

    def ddpm_step(
        self, x_t: torch.Tensor, x0: torch.Tensor, t: int, t_prev: int, noise: torch.Tensor
    ) -> torch.Tensor:
        """Ancestral sample x_{t_prev} ~ p(x_{t_prev} | x_t) with x̂₀ plugged into the posterior."""
        mean, std = self.ddpm_posterior(x_t, x0, t, t_prev)
        return mean + std * noise if t_prev >= 0 else mean


def prev_timesteps(timesteps: list[int]) -> list[int]:
    """For each timestep in a descending list, the one after it (−1 after the last)."""
    return list(timesteps[1:]) + [-1]
