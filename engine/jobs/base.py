"""Shared job plumbing: the context a runner gets, its result, and input preparation."""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from .. import imageops
from ..denoiser import Denoiser
from ..errors import InputError, NonFiniteError
from ..methods import COMMON, METHODS, OptionSpec
from ..models import ModelBundle
from ..types import EditRequest

JOB_RUNNERS: dict[str, Callable] = {}


def job(method: str):
    """Attach the runner of ``EditRequest.method`` to its declaration in ``engine.methods``."""
    if method not in METHODS:
        raise ValueError(f"{method!r} has no declaration in engine.methods")

    def register(fn):
        METHODS[method].runner = fn
        JOB_RUNNERS[method] = fn
        return fn

    return register


@dataclass
class JobContext:
    bundle: ModelBundle
    denoiser: Denoiser
    # raises when the job was cancelled; long CPU work between model calls calls it
    check_cancel: Callable[[], None] = lambda: None


@dataclass
class JobResult:
    """A job's picture, the parameters that made it (PNG metadata, history), and what else
    it hands on (``extras``: masks, inversions, ``notice``: one line the user should read,
    about a choice the job made of its own accord)."""

    image: np.ndarray | None
    parameters: dict[str, Any] = field(default_factory=dict)
    extras: dict[str, Any] = field(default_factory=dict)


@dataclass
class Prepared:
    """An input image at working size, its latents, and the mask at every resolution."""

    original: np.ndarray  # uint8 HxWx3 as given (strokes composited)
    working: np.ndarray  # uint8 at working size
    latents: torch.Tensor  # 1xCxhxw
    mask: np.ndarray | None  # float, original size
    mask_working: np.ndarray | None  # float, working size
    mask_latent: torch.Tensor | None  # 1x1xhxw float


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 24 else text[:20] + "…"


def _check_number(name: str, value: Any, lo: float, hi: float, integer: bool = False) -> None:
    kind = "a whole number" if integer else "a number"
    if not _is_number(value) or (integer and not isinstance(value, numbers.Integral)):
        raise InputError(f"{name} must be {kind}, got {_show(value)}.")
    # ints are compared exactly (math.isfinite overflows on a 400-digit int)
    finite = isinstance(value, numbers.Integral) or math.isfinite(value)
    if not finite or not lo <= value <= hi:
        bounds = f"{lo} and {hi}" if integer else f"{lo:g} and {hi:g}"
        raise InputError(f"{name} must be between {bounds}, got {_show(value)}.")


def max_steps(schedule=None) -> int:
    """The most sampling steps a schedule can space out (its training timesteps, less the
    offset its "leading" spacing adds)."""
    if schedule is None:
        return int(COMMON["steps"].hi)
    return int(schedule.num_train_timesteps) - int(getattr(schedule, "steps_offset", 0) or 0)


def check_common(req: EditRequest, schedule=None) -> None:
    """The request's common fields, every value checked for type, finiteness and range."""
    for name in ("prompt", "negative_prompt"):
        if not isinstance(getattr(req, name), str):
            raise InputError(f"The {name.replace('_', ' ')} must be text.")
    for name, spec in COMMON.items():
        hi = max_steps(schedule) if name == "steps" else spec.hi
        label = "The seed" if name == "seed" else spec.label
        _check_number(label, getattr(req, name), spec.lo, hi, integer=spec.kind is int)
    for name in ("width", "height"):
        if getattr(req, name) is not None:
            _check_number(f"The {name}", getattr(req, name), 8, 8192, integer=True)


def validate(req: EditRequest, schedule=None) -> None:
    """Everything about a request that can be checked without running a model: the common
    fields (steps against ``schedule`` when given) and every option's name and value."""
    check_common(req, schedule)
    Options(req.method, req.options).check_all()


def start_job(ctx: JobContext, req: EditRequest, common: bool = True) -> Options:
    """A runner's first line: check the request against the loaded model's schedule and
    return its options, so bad input fails before any model work."""
    if common:
        check_common(req, ctx.denoiser.schedule)
    options = Options(req.method, req.options)
    options.check_all()
    # every embedding of the job gets the windows its longest prompt needs (75 tokens each)
    reference = req.options.get("reference_prompt", "")
    ctx.denoiser.fit_prompts(req.prompt, req.negative_prompt, reference)
    return options


def check_finite(x: torch.Tensor | np.ndarray, what: str, ctx: JobContext | None = None) -> None:
    """A NaN or inf result is a failure, never a black image in the history."""
    ok = bool(torch.isfinite(x).all()) if isinstance(x, torch.Tensor) else np.isfinite(x).all()
    if not ok:
        dtype = "" if ctx is None else f" (it ran in {str(ctx.bundle.dtype).replace('torch.', '')})"
        raise NonFiniteError(
            f"The model produced NaN/inf values in the {what}{dtype}; try fp32 (--dtype fp32), "
            "a lower guidance or fewer steps."
        )


# ---- method options -------------------------------------------------------------------------


# method → {option: OptionSpec}, as declared in engine.methods
OPTIONS: dict[str, dict[str, OptionSpec]] = {name: m.options for name, m in METHODS.items()}


class Options:
    """Typed, validated access to ``EditRequest.options`` with per-method defaults. Unknown
    names are refused, so a typo is not silently ignored (and written into metadata)."""

    def __init__(self, method: str, options: Mapping[str, Any]):
        self.method = method
        self.specs = METHODS[method].options if method in METHODS else {}
        self.options = options
        unknown = sorted(str(k) for k in options if k not in self.specs)
        if unknown:
            known = ", ".join(sorted(self.specs)) or "none"
            raise InputError(
                f"Unknown option {unknown[0]!r} for {method}; its options are: {known}."
            )

    def get(self, key: str) -> Any:
        if key in self.options:
            return self.options[key]
        return self.specs[key].default

    def number(self, key: str):
        spec, value = self.specs[key], self.get(key)
        if spec.kind is int and isinstance(value, float) and value.is_integer():
            value = int(value)  # 5.0 from JSON or a PNG is 5
        name = f"The option {key!r} of {self.method}"
        _check_number(name, value, spec.lo, spec.hi, integer=spec.kind is int)
        return spec.kind(value)

    def choice(self, key: str) -> str:
        spec, value = self.specs[key], self.get(key)
        if value not in spec.choices:
            raise InputError(
                f"The option {key!r} must be one of {list(spec.choices)}, got {value!r}."
            )
        return value

    def text(self, key: str) -> str:
        value = self.get(key)
        if not isinstance(value, str):
            raise InputError(f"The option {key!r} must be text, got {value!r}.")
        return value

    def flag(self, key: str) -> bool:
        value = self.get(key)
        if not isinstance(value, bool):
            raise InputError(f"The option {key!r} must be true or false, got {value!r}.")
        return value

    def check_all(self) -> None:
        for key, spec in self.specs.items():
            if spec.choices:
                self.choice(key)
            elif spec.kind in (int, float):
                self.number(key)
            elif spec.kind is str:
                self.text(key)
            elif spec.kind is bool:
                self.flag(key)


def prepare(ctx: JobContext, req: EditRequest, grow: int = 0) -> Prepared:
    """Composite strokes, resize to working size, encode, and bring the mask along."""
    b = ctx.bundle
    image = imageops.check_image(req.image)
    image = imageops.composite_strokes(image, req.strokes)
    mask = imageops.mask_to_float(req.mask, image.shape[:2])
    if mask is not None and not mask.any():
        raise InputError(
            f"The mask is empty (all black): paint where {req.method} should change the "
            "image (white = edit), or run without a mask."
        )
    hw = imageops.working_size(*image.shape[:2], b.native_size, b.vae_factor)
    working = imageops.resize(image, hw)
    latents = b.encode(working).float()
    mask_w = mask_l = None
    if mask is not None:
        mask_w = imageops.resize(mask, hw)
        mask_l = imageops.latent_mask(mask_w, latents, grow=grow)
    return Prepared(image, working, latents, mask, mask_w, mask_l)


def finish_image(
    ctx: JobContext,
    latents: torch.Tensor,
    prep: Prepared | None,
    size: tuple[int, int],
    feather_px: float = 0.0,
) -> np.ndarray:
    """Decode, resize to the requested size and, with a mask, composite onto the original
    so that every pixel outside the mask is the input pixel (the feather lies inside it)."""
    check_finite(latents, "final latents", ctx)
    out = imageops.resize(ctx.bundle.decode(latents, check_finite=True), size)
    if prep is not None and prep.mask is not None:
        out = paste_into(prep.original, out, prep.mask, feather_px, ctx.check_cancel)
    return out


def paste_into(
    original: np.ndarray,
    edited: np.ndarray,
    mask: np.ndarray,
    feather_px: float = 0.0,
    check_cancel: Callable[[], None] | None = None,
) -> np.ndarray:
    """``edited`` inside ``mask`` (float, image size), faded in over ``feather_px`` px inside
    its border (0: 1 % of the image side, at least 2 px); ``original`` everywhere else."""
    radius = feather_px or max(2.0, 0.01 * max(original.shape[:2]))
    return imageops.composite(original, edited, imageops.feather(mask, radius, check_cancel))


def seeded(req: EditRequest) -> torch.Generator:
    return torch.Generator("cpu").manual_seed(int(req.seed))


def batch_seeds(req: EditRequest) -> list[int]:
    """The seeds of the ``batch_size`` pictures one pass makes: seed, seed + 1, … (as A1111
    numbers a batch), wrapping within what ``manual_seed`` accepts (-2⁶³ … 2⁶⁴ − 1)."""
    n = int(req.options.get("batch_size", 1))
    return [int(req.seed) + k - (2**64 if int(req.seed) + k >= 2**64 else 0) for k in range(n)]


def generators(seeds: list[int]) -> list[torch.Generator]:
    """One CPU generator per picture, so each is what its seed makes alone."""
    return [torch.Generator("cpu").manual_seed(s) for s in seeds]


def batch_result(
    ctx: JobContext,
    latents: torch.Tensor,
    prep: Prepared | None,
    size: tuple[int, int],
    seeds: list[int],
    parameters: dict[str, Any],
    feather_px: float = 0.0,
) -> JobResult:
    """One picture per sample of ``latents`` (``finish_image`` each): the first is the
    result, the others go to ``extras["batch"]`` as {"image", "seed"} in seed order."""
    images = [
        finish_image(ctx, latents[k : k + 1], prep, size, feather_px) for k in range(len(seeds))
    ]
    more = [{"image": im, "seed": s} for im, s in zip(images[1:], seeds[1:], strict=True)]
    return JobResult(images[0], parameters, {"batch": more} if more else {})
