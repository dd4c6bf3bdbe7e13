"""Requests and events: the only things that cross the engine boundary.

Conventions (engine/README.md):
- images are uint8 HxWx3 RGB numpy arrays; stroke layers uint8 HxWx4 RGBA;
- masks are uint8 HxW (255 = edit here, 0 = keep) or float in [0, 1];
- every event carries the job id it belongs to, so receivers can drop stale ones.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np


def __getattr__(name: str):
    """``METHODS``: the declared method names (``engine.methods``, which imports the
    algorithms, so it is read on first use)."""
    if name == "METHODS":
        from .methods import NAMES

        return NAMES
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class _Declared:
    """A left-out common field: replaced by its declared default (None stays an error)."""

    def __repr__(self) -> str:
        return "DECLARED"


DECLARED: Any = _Declared()


def _frozen(arr: np.ndarray | None) -> np.ndarray | None:
    """Copy and make read-only, so a request cannot change after it is submitted."""
    if arr is None:
        return None
    out = np.array(arr, copy=True)
    out.setflags(write=False)
    return out


@dataclass(frozen=True)
class EditRequest:
    """Everything one job needs. Built on the GUI side, read on the engine thread.

    ``options`` holds method-specific parameters (e.g. RePaint's ``jump_length``).
    ``width``/``height`` are used by ``generate`` only; other methods take the image size.
    ``steps``/``guidance``/``strength``/``seed`` left out take the defaults declared in
    ``engine.methods.COMMON`` (read when the request is made, so there is one copy of them).
    """

    method: str
    prompt: str = ""
    negative_prompt: str = ""
    image: np.ndarray | None = None
    strokes: np.ndarray | None = None
    mask: np.ndarray | None = None
    width: int | None = None
    height: int | None = None
    steps: int = DECLARED  # type: ignore[assignment]
    guidance: float = DECLARED  # type: ignore[assignment]
    strength: float = DECLARED  # type: ignore[assignment]
    seed: int = DECLARED  # type: ignore[assignment]
    options: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        from .methods import COMMON, NAMES  # engine.methods imports the algorithms

        if self.method not in NAMES:
            raise ValueError(f"unknown method {self.method!r}; expected one of {NAMES}")
        for name, spec in COMMON.items():
            if getattr(self, name) is DECLARED:
                object.__setattr__(self, name, spec.default)
        for name in ("image", "strokes", "mask"):
            object.__setattr__(self, name, _frozen(getattr(self, name)))
        object.__setattr__(self, "options", MappingProxyType(dict(self.options)))

    def parameters(self) -> dict[str, Any]:
        """Plain parameters (no arrays) for metadata and history."""
        out = {
            "method": self.method,
            "prompt": self.prompt,
            "negative_prompt": self.negative_prompt,
            "steps": self.steps,
            "guidance": self.guidance,
            "seed": self.seed,
        }
        if self.method != "generate":
            out["strength"] = self.strength
        out.update(self.options)
        return out


@dataclass(frozen=True)
class LoadModelRequest:
    """Load (or switch to) a model: ``builtin:demo``, ``builtin:tiny``, a folder or a file."""

    model: str
    device: str | None = None
    dtype: str | None = None
    prediction_type: str | None = None  # override for SD 2.x files ("epsilon"/"v_prediction")


@dataclass(frozen=True)
class LoraRequest:
    """Change the LoRAs fused into the loaded model (``engine.lora``), between jobs: "add"
    the .safetensors file at ``path`` at ``weight``; set the "weight" of, or "remove", the
    LoRA called ``name`` (its file's stem); "clear" them all. Answered by ``LorasChanged``."""

    action: str
    path: str = ""
    name: str = ""
    weight: float = 1.0


@dataclass(frozen=True)
class ModelInfo:
    name: str
    device: str
    dtype: str
    prediction_type: str
    native_size: int
    # optional parts the model ships, which some options need (OptionSpec.requires), and
    # "inpainting" for an inpainting UNet
    parts: tuple[str, ...] = ()
    # a few-step model ("lcm", "lcm-lora", "turbo", "hyper", "tcd"; "" for an ordinary one,
    # engine.few_step) and the form values it wants: {"sampler": "lcm", "steps", "guidance"}
    few_step: str = ""
    defaults: Mapping[str, Any] = field(default_factory=dict)
    # the LoRAs fused into the model, in load order: (name, weight) (engine.lora)
    loras: tuple[tuple[str, float], ...] = ()
    # the model family in words, e.g. "Stable Diffusion XL base (1024 px, two text encoders)"
    family: str = ""


# ---- events (engine → receiver) ----------------------------------------------------------


@dataclass(frozen=True)
class Event:
    job_id: int


@dataclass(frozen=True)
class Started(Event):
    kind: str  # the method's name, or "load"


@dataclass(frozen=True)
class Step(Event):
    """After every model call: step ``i`` of ``n`` (1-based), its timestep and an x̂₀ preview."""

    i: int
    n: int
    timestep: int
    preview: np.ndarray | None
    label: str = ""
    mask: np.ndarray | None = None  # float32 h x w in [0, 1] at latent size: a forming mask


@dataclass(frozen=True)
class Finished(Event):
    image: np.ndarray | None
    parameters: Mapping[str, Any]
    extras: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class ModelLoaded(Event):
    info: ModelInfo


@dataclass(frozen=True)
class LorasChanged(Event):
    """A ``LoraRequest`` done: the model's info with its LoRAs (``info.loras``) as they are
    now, and the few-step defaults they imply (``info.few_step``, ``info.defaults``)."""

    info: ModelInfo


@dataclass(frozen=True)
class Failed(Event):
    message: str
    kind: str = "error"


@dataclass(frozen=True)
class Cancelled(Event):
    pass
