"""LoRA files (Hu et al. 2021, "LoRA: Low-Rank Adaptation"): W' = W + s · (α/r) · B A.

A ``.safetensors`` LoRA in the diffusers/PEFT key layout (``unet.…to_q.lora_A.weight``, or the
older ``…to_q.lora.down.weight``) or kohya's (``lora_unet_…_to_q.lora_down.weight`` with
``.alpha``) is loaded through diffusers' LoRA loading (``StableDiffusionLoraLoaderMixin``,
which converts kohya keys and injects PEFT layers), offline, and fused into the weights at its
weight s; the PEFT layers are then removed, so sampling runs the plain model at full speed.

Unfusing by subtracting B A again would leave rounding errors in every touched weight, so the
original weights of every layer a LoRA touches are kept (on the CPU) the first time it is
touched; every change (add, remove, new weight) restores them bit-exactly and fuses the
current list again. A file that cannot be read or does not fit the model raises
``LoraError`` with one sentence, and the model is left as it was.
"""

from __future__ import annotations

import hashlib
import os
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import EngineError

WEIGHT_RANGE = (-4.0, 4.0)  # beyond this a LoRA only saturates the picture


class LoraError(EngineError):
    """A LoRA file that cannot be read, or does not fit the loaded model."""


@dataclass(frozen=True)
class Lora:
    """One loaded LoRA file: its name (the file's stem, as A1111 names them), weight, path
    and A1111's short hash (``lora_hash``)."""

    name: str
    path: str
    weight: float
    hash: str


@dataclass
class LoraState:
    """The LoRAs fused into a bundle and the pristine weights of every layer they touch."""

    loras: list[Lora] = field(default_factory=list)
    # "unet"/"text_encoder" → {parameter name: its weight before any LoRA}, on the CPU
    pristine: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    files: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)  # path → tensors


def state_of(bundle) -> LoraState:
    """The bundle's LoRA state, kept on it (a new model starts without LoRAs)."""
    if getattr(bundle, "lora_state", None) is None:
        bundle.lora_state = LoraState()
    return bundle.lora_state


def lora_list(bundle) -> tuple[tuple[str, float], ...]:
    """(name, weight) of every LoRA fused into ``bundle``, in load order (for ModelInfo)."""
    state = getattr(bundle, "lora_state", None)
    return tuple((x.name, x.weight) for x in state.loras) if state else ()


# ---- files ---------------------------------------------------------------------------------


def lora_hash(path: str | os.PathLike) -> str:
    """A1111's "Lora hashes" value: the first 12 hex digits of the SHA-256 of the file's
    tensor data (everything after the safetensors header), so that editing the metadata
    does not change it."""
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        h = hashlib.sha256()
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()[:12]


def read_lora_file(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The tensors of a LoRA file, or ``LoraError`` saying why it is not one."""
    from safetensors.torch import load_file

    path = Path(path).expanduser()
    if not path.is_file():
        raise LoraError(f"No LoRA file at {path}: the file does not exist.")
    if path.suffix.lower() != ".safetensors":
        raise LoraError(
            f"{path.name} is not a LoRA file Diffusion Editor can load: choose a .safetensors file."
        )
    try:
        tensors = load_file(str(path))
    except Exception as e:  # a truncated or foreign file: one sentence, not a traceback
        raise LoraError(f"{path.name} is not a readable .safetensors file ({_short(e)}).") from None
    if not tensors or not any("lora" in k for k in tensors):
        raise LoraError(
            f"{path.name} holds no LoRA weights (no lora_A/lora_B or lora_down/lora_up keys); "
            "it may be a full checkpoint: open it as a model instead."
        )
    return tensors


def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text if len(text) <= 160 else text[:157] + "…"


# ---- fusing ----------------------------------------------------------------------------------


TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # SDXL has two (the refiner only the 2nd)


def _loader(bundle):
    """diffusers' LoRA loading for the bundle's family (key conversion, kohya included, and
    PEFT injection): SDXL's when it has a second text encoder."""
    from diffusers.loaders import StableDiffusionLoraLoaderMixin, StableDiffusionXLLoraLoaderMixin

    if getattr(bundle, "text_encoder_2", None) is not None:
        return StableDiffusionXLLoraLoaderMixin
    return StableDiffusionLoraLoaderMixin


def _models(bundle) -> dict[str, torch.nn.Module]:
    """The parts a LoRA may change: the UNet and whichever text encoders the model has."""
    parts = {"unet": bundle.unet}
    for name in TEXT_ENCODERS:
        if getattr(bundle, name, None) is not None:
            parts[name] = getattr(bundle, name)
    return parts


def _restore(bundle, state: LoraState) -> None:
    """Every touched weight back to its pristine value, bit for bit; PEFT layers removed."""
    _remove_adapters(bundle)
    for part, model in _models(bundle).items():
        params = dict(model.named_parameters())
        for name, value in state.pristine.get(part, {}).items():
            params[name].data.copy_(value)


def _keep_pristine(bundle, state: LoraState) -> None:
    """Before fusing: copy the base weight of every layer a PEFT adapter now wraps (the
    first time only: later copies would hold a fused weight)."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    for part, model in _models(bundle).items():
        kept = state.pristine.setdefault(part, {})
        for name, module in model.named_modules():
            if not isinstance(module, BaseTunerLayer):
                continue
            for pname, p in module.get_base_layer().named_parameters(recurse=False):
                key = f"{name}.{pname}"  # the parameter's name once the wrapper is gone
                if key not in kept:
                    kept[key] = p.detach().to("cpu", copy=True)


def _fuse(bundle, state: LoraState, loras: list[Lora]) -> None:
    """Restore, then load every LoRA as a PEFT adapter, merge them at their weights into the
    base weights, and remove the adapters again."""
    from diffusers.loaders.lora_base import set_adapters_for_text_encoder
    from peft.tuners.tuners_utils import BaseTunerLayer

    _restore(bundle, state)
    if not loras:
        state.pristine.clear()
        return
    names = [f"lora{i}" for i in range(len(loras))]
    with warnings.catch_warnings():  # PEFT's notes on several adapters are not for users
        warnings.simplefilter("ignore", UserWarning)
        _load_adapters(bundle, state, loras, names, _loader(bundle))
    _keep_pristine(bundle, state)
    weight = {n: x.weight for n, x in zip(names, loras)}
    for part, model in _models(bundle).items():
        active = [n for n in names if n in getattr(model, "peft_config", {})]
        if not active:
            continue
        if part == "unet":
            model.set_adapters(active, [weight[n] for n in active])
        else:
            set_adapters_for_text_encoder(active, model, [weight[n] for n in active])
        for module in model.modules():
            if isinstance(module, BaseTunerLayer):
                module.merge(adapter_names=[n for n in active if n in module.lora_A])
    _remove_adapters(bundle)


def _load_adapters(bundle, state: LoraState, loras: list[Lora], names, loader) -> None:
    for name, lora in zip(names, loras):
        sd, alphas = loader.lora_state_dict(dict(state.files[lora.path]))
        if not all("lora" in k for k in sd):
            raise ValueError("some of its keys are not LoRA weights")
        models = _models(bundle)
        loader.load_lora_into_unet(sd, alphas, models.pop("unet"), adapter_name=name)
        for part, model in models.items():
            loader.load_lora_into_text_encoder(sd, alphas, model, prefix=part, adapter_name=name)
        if not any(name in getattr(m, "peft_config", {}) for m in _models(bundle).values()):
            raise ValueError("none of its layers is in this model")


def _remove_adapters(bundle) -> None:
    """Remove the PEFT wrappers and keep the merged weights (the fused LoRAs)."""
    from diffusers.utils.peft_utils import recurse_remove_peft_layers

    for model in _models(bundle).values():
        recurse_remove_peft_layers(model)
        if hasattr(model, "peft_config"):
            del model.peft_config
        model._hf_peft_config_loaded = False


def _has_adapters(model) -> bool:
    from peft.tuners.tuners_utils import BaseTunerLayer

    return any(isinstance(m, BaseTunerLayer) for m in model.modules())


def set_loras(bundle, loras: list[Lora]) -> None:
    """Make ``loras`` (in order, at their weights) the LoRAs fused into ``bundle``. On any
    failure the previous LoRAs are fused again and ``LoraError`` says which file failed."""
    state = state_of(bundle)
    previous = list(state.loras)
    for lora in loras:
        if lora.path not in state.files:
            state.files[lora.path] = read_lora_file(lora.path)
    try:
        _fuse(bundle, state, loras)
    except Exception as e:
        _fuse(bundle, state, previous)
        bad = next((x for x in loras if x not in previous), loras[-1] if loras else None)
        name = Path(bad.path).name if bad else "The LoRA"
        raise LoraError(
            f"{name} does not fit {bundle.name} (it may be for another model family, e.g. SDXL "
            f"or SD 2): {_short(e)}"
        ) from None
    state.loras = list(loras)
    for path in list(state.files):  # forget files no longer used
        if all(x.path != path for x in loras):
            del state.files[path]


def _check_weight(weight: float) -> float:
    lo, hi = WEIGHT_RANGE
    if not isinstance(weight, int | float) or isinstance(weight, bool) or not lo <= weight <= hi:
        raise LoraError(f"A LoRA weight must be a number from {lo:g} to {hi:g}, got {weight!r}.")
    return float(weight)


def add_lora(bundle, path: str | os.PathLike, weight: float = 1.0) -> Lora:
    """Fuse one more LoRA file (or change the weight of one already loaded from there)."""
    weight = _check_weight(weight)
    path = str(Path(path).expanduser().resolve())
    current = state_of(bundle).loras
    if any(x.path == path for x in current):
        return set_lora_weight(bundle, Path(path).stem, weight)
    tensors = read_lora_file(path)
    lora = Lora(Path(path).stem, path, weight, lora_hash(path))
    if any(x.name == lora.name for x in current):
        raise LoraError(f"A LoRA named {lora.name} is already loaded; remove it first.")
    state_of(bundle).files[path] = tensors
    set_loras(bundle, [*current, lora])
    return lora


def _find(bundle, name: str) -> Lora:
    for x in state_of(bundle).loras:
        if x.name == name:
            return x
    loaded = ", ".join(x.name for x in state_of(bundle).loras) or "none"
    raise LoraError(f"No LoRA named {name!r} is loaded (loaded: {loaded}).")


def remove_lora(bundle, name: str) -> None:
    """Unfuse one LoRA: the weights it touched return to what they were without it."""
    gone = _find(bundle, name)
    set_loras(bundle, [x for x in state_of(bundle).loras if x is not gone])


def set_lora_weight(bundle, name: str, weight: float) -> Lora:
    weight = _check_weight(weight)
    old = _find(bundle, name)
    new = Lora(old.name, old.path, weight, old.hash)
    set_loras(bundle, [new if x is old else x for x in state_of(bundle).loras])
    return new


def clear_loras(bundle) -> None:
    set_loras(bundle, [])


def describe(bundle) -> list[dict]:
    """The loaded LoRAs as plain data: name, weight, hash (for metadata and history)."""
    return [{"name": x.name, "weight": x.weight, "hash": x.hash} for x in state_of(bundle).loras]


def run_lora_request(bundle, req) -> None:
    """Carry out an ``engine.types.LoraRequest`` on ``bundle``."""
    if req.action == "add":
        add_lora(bundle, req.path, req.weight)
    elif req.action == "weight":
        set_lora_weight(bundle, req.name, req.weight)
    elif req.action == "remove":
        remove_lora(bundle, req.name)
    elif req.action == "clear":
        clear_loras(bundle)
    else:
        raise LoraError(f"Unknown LoRA action {req.action!r}; use add, weight, remove or clear.")
