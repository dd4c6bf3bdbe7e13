"""Load Stable Diffusion models from disk, fully offline (``engine.model_writer`` saves them).

Two on-disk forms are understood:

- a **diffusers folder** in the SD layout: ``model_index.json``, ``unet/``, ``vae/``,
  ``text_encoder/``, ``tokenizer/``, ``scheduler/`` (SDXL adds ``text_encoder_2/`` and
  ``tokenizer_2/``; its refiner has only those two encoder parts: ``engine.sdxl``);
- a **single file** (``.safetensors``, or ``.ckpt`` holding plain tensors) in the original
  CompVis/Stability key layout: UNet ``model.diffusion_model.*``, VAE ``first_stage_model.*``,
  text encoder ``cond_stage_model.transformer.*`` (OpenAI CLIP, SD 1.x) or
  ``cond_stage_model.model.*`` (OpenCLIP, SD 2.x); SDXL's (SGM) files have the added
  embedding ``model.diffusion_model.label_emb.*`` and ``conditioner.embedders.{0,1}.*``.

A single file carries no configs. They come from, first match wins:

1. the ``config_dir`` argument: a folder in the diffusers layout (configs only; its weights, if
   any, are ignored);
2. a sidecar folder ``<name>.config/`` next to ``<name>.safetensors``
   (``model_writer.save_single_file`` writes one, so a saved file reloads without arguments);
3. the family recognised from the weights (``detect_family``), with the configs that ship in
   ``engine/configs/<family>/``: ``sd15`` (SD 1.x), ``sd2`` (SD 2.x base: 512 px, epsilon),
   ``sd2-v`` (SD 2.x: 768 px, v-prediction), ``sdxl`` and ``sdxl-refiner``.

SD 2.x epsilon and v-prediction checkpoints have identical tensors, so the weights cannot tell
them apart: a 2.x file is taken as ``sd2-v`` unless its file name contains "base" or the caller
passes ``prediction_type="epsilon"``. ``prediction_type`` also overrides any scheduler config.

Every component is built on the ``meta`` device from its config and then receives its weights
strictly: a missing, unexpected or mis-shaped tensor is an error, never a silently random
layer. Weights come back as fp32 on the CPU; ``engine.models`` moves them to the device.
Every failure a user can cause raises ``ModelLoadError`` with a sentence they can act on.
"""

from __future__ import annotations

import json
import os
import pickle
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any

import torch

from . import sdxl
from .errors import ModelLoadError, OutOfMemoryError

ASSETS = Path(__file__).resolve().parent.parent / "assets"
# The CLIP tokenizer shipped with the app: used when a model brings none of its own.
CLIP_TOKENIZER_DIR = ASSETS / "tokenizer" / "clip"
CONFIGS_DIR = Path(__file__).resolve().parent / "configs"

# Single-file prefixes (the original Stable Diffusion layout).
UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "cond_stage_model.transformer."
OPEN_CLIP_PREFIX = "cond_stage_model.model."
# The first cross-attention's key projection: its input width is the text context dimension.
CONTEXT_KEY = UNET_PREFIX + "input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"

FAMILIES = {
    "sd15": "Stable Diffusion 1.x (512 px, epsilon)",
    "sd2": "Stable Diffusion 2.x base (512 px, epsilon)",
    "sd2-v": "Stable Diffusion 2.x (768 px, v-prediction)",
    "sdxl": "Stable Diffusion XL base (1024 px, two text encoders)",
    "sdxl-refiner": "Stable Diffusion XL refiner (1024 px, one text encoder)",
}
SUPPORTED = "Stable Diffusion 1.x and 2.x (including v-prediction), and SDXL (base and refiner)"
SINGLE_FILE_SUFFIXES = (".safetensors", ".ckpt")
_FOLDER_PARTS = {
    "unet": "the denoising UNet",
    "vae": "the image autoencoder",
    "text_encoder": "the text encoder",
    "tokenizer": "the prompt tokenizer",
    "scheduler": "the noise schedule",
}
_WEIGHT_NAMES = (
    "diffusion_pytorch_model.safetensors",
    "model.safetensors",
    "diffusion_pytorch_model.bin",
    "pytorch_model.bin",
    "diffusion_pytorch_model.fp16.safetensors",
    "model.fp16.safetensors",
    "diffusion_pytorch_model.fp16.bin",
    "pytorch_model.fp16.bin",
)
_WEIGHT_INDEXES = ("diffusion_pytorch_model.safetensors.index.json", "model.safetensors.index.json")


# ---- public API: loading --------------------------------------------------------------------


# The dtype ``_build`` copies UNet and text-encoder weights into: the one the model will run
# in, so a half-precision load (a GPU's) never holds a float32 copy of the whole model in RAM
# (SDXL: 14 GB instead of 7). Set for the duration of one ``load_path``.
_BUILD_DTYPE: ContextVar[torch.dtype] = ContextVar("build_dtype", default=torch.float32)


def load_path(
    path: str | os.PathLike,
    config_dir: str | os.PathLike | None = None,
    prediction_type: str | None = None,
    dtype: torch.dtype = torch.float32,
) -> dict[str, Any]:
    """Load a diffusers folder or a single checkpoint file into the parts dict
    (``unet, vae, text_encoder, tokenizer, scheduler_config, vae_scale``), the UNet and text
    encoders in ``dtype`` (the VAE in float32: ``engine.models`` picks its run dtype)."""
    token = _BUILD_DTYPE.set(dtype)
    try:
        return _load_path(Path(path).expanduser(), config_dir, prediction_type)
    finally:
        _BUILD_DTYPE.reset(token)


def _load_path(path: Path, config_dir, prediction_type) -> dict[str, Any]:
    if not path.exists():
        raise ModelLoadError(
            f"No model found at {path}: the path does not exist. Check the spelling, or choose "
            "a model folder or a .safetensors file."
        )
    if path.is_file() and path.name == "model_index.json":
        path = path.parent  # the user picked the index file of a diffusers folder
    if path.is_dir():
        if config_dir is not None:
            raise ModelLoadError(
                f"{path} is a model folder, which carries its own configs; a separate config "
                "folder only applies to single-file checkpoints."
            )
        return load_diffusers_folder(path, prediction_type=prediction_type)
    if path.suffix.lower() not in SINGLE_FILE_SUFFIXES:
        raise ModelLoadError(
            f"{path.name} is not a model Diffusion Editor can load: choose a .safetensors "
            "(or .ckpt) checkpoint, or a diffusers model folder (the one with model_index.json)."
        )
    return load_single_file(path, config_dir=config_dir, prediction_type=prediction_type)


def load_diffusers_folder(
    path: str | os.PathLike, prediction_type: str | None = None
) -> dict[str, Any]:
    """Load a diffusers folder in the Stable Diffusion layout."""
    path = Path(path).expanduser()
    with _user_errors(path):
        if not path.is_dir():
            raise ModelLoadError(f"No model folder at {path}: the folder does not exist.")
        index_file = path / "model_index.json"
        if not index_file.is_file():
            raise ModelLoadError(
                f"{path} is not a diffusers model folder: it has no model_index.json. Choose the "
                "folder that contains model_index.json, unet/ and vae/, or a .safetensors file."
            )
        index = _read_json(index_file)
        _check_pipeline_kind(index, path)
        if sdxl.is_sdxl_index(index):
            return sdxl.load_folder(path, index, prediction_type)
        for part, role in _FOLDER_PARTS.items():
            if not (path / part).is_dir():
                raise ModelLoadError(
                    f"The model folder {path} is missing its {part}/ folder ({role}). Copy or "
                    "download the complete model folder."
                )
        configs = _read_configs(path)
        _check_unet_config(configs["unet"], path)
        unet = _build("unet", configs["unet"], _read_folder_weights(path / "unet"), f"{path}/unet")
        vae = _build("vae", configs["vae"], _read_folder_weights(path / "vae"), f"{path}/vae")
        text_encoder = _build(
            "text_encoder",
            configs["text_encoder"],
            _read_folder_weights(path / "text_encoder"),
            f"{path}/text_encoder",
        )
        tokenizer = _load_tokenizer(path / "tokenizer", require_files=True)
        return _parts(unet, vae, text_encoder, tokenizer, configs["scheduler"], prediction_type)


def load_single_file(
    path: str | os.PathLike,
    config_dir: str | os.PathLike | None = None,
    prediction_type: str | None = None,
) -> dict[str, Any]:
    """Load a checkpoint in the original SD layout (see the module docstring for configs)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    path = Path(path).expanduser()
    with _user_errors(path):
        checkpoint = read_checkpoint(path)
        if config_dir is None and sidecar_dir(path).is_dir():
            config_dir = sidecar_dir(path)
        if config_dir is None:
            family = detect_family(checkpoint, path.name, prediction_type)
            config_dir = CONFIGS_DIR / family
        else:
            config_dir = Path(config_dir).expanduser()
            _check_sd_layout(checkpoint, path.name)
            if not (config_dir / "unet" / "config.json").is_file():
                raise ModelLoadError(
                    f"The config folder {config_dir} has no unet/config.json; it must be laid "
                    "out like a diffusers model folder (unet/, vae/, text_encoder/, scheduler/)."
                )
        if sdxl.is_sgm(checkpoint):
            return sdxl.load_single_file(path, checkpoint, config_dir, prediction_type)
        configs = _read_configs(config_dir)
        configs["unet"] = fit_unet_config(configs["unet"], checkpoint)
        _check_unet_config(configs["unet"], path)
        _check_components_present(checkpoint, path.name)

        unet_sd = convert_ldm_unet_checkpoint(checkpoint, configs["unet"])
        unet = _build("unet", configs["unet"], unet_sd, path.name)
        vae_sd = convert_ldm_vae_checkpoint(checkpoint, configs["vae"])
        vae = _build("vae", configs["vae"], vae_sd, path.name)
        text_sd = _convert_text_encoder(checkpoint, configs["text_encoder"])
        text_encoder = _build("text_encoder", configs["text_encoder"], text_sd, path.name)
        tokenizer = _load_tokenizer(config_dir / "tokenizer", require_files=False)
        return _parts(unet, vae, text_encoder, tokenizer, configs["scheduler"], prediction_type)


def sidecar_dir(path: str | os.PathLike) -> Path:
    """The config folder that travels with a single file: ``model.safetensors`` →
    ``model.config/``."""
    path = Path(path)
    return path.with_name(path.stem + ".config")


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Read a single-file checkpoint into a flat dict of tensors (no code is unpickled)."""
    suffix = path.suffix.lower()
    if suffix == ".safetensors":
        state = _read_safetensors(path)
    elif suffix in (".ckpt", ".pt", ".pth", ".bin"):
        state = _read_torch_file(path)
    else:
        raise ModelLoadError(
            f"{path.name} has an unsupported extension; use a .safetensors or .ckpt checkpoint."
        )
    while isinstance(state.get("state_dict"), Mapping):  # Lightning checkpoints nest the weights
        state = state["state_dict"]
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise ModelLoadError(f"{path.name} contains no weights.")
    return tensors


def detect_family(
    checkpoint: Mapping[str, Any], filename: str = "", prediction_type: str | None = None
) -> str:
    """Recognise a single-file checkpoint's family from its keys and shapes only.

    Returns a key of ``FAMILIES``. SDXL has an added embedding (``label_emb``) and its text
    encoders under ``conditioner.embedders.*``; base and refiner differ in its width
    (``sdxl.detect``). SD 1.x and 2.x differ in the text context width of the
    UNet's cross-attention (768 for CLIP ViT-L, 1024 for OpenCLIP ViT-H). SD 2.x epsilon vs
    v-prediction cannot be told from weights: "base" in the file name or
    ``prediction_type="epsilon"`` selects ``sd2``, anything else ``sd2-v``.
    """
    name = filename or "This checkpoint"
    _check_other_family(checkpoint, name)
    _check_sd_layout(checkpoint, filename)
    if sdxl.is_sgm(checkpoint):
        return sdxl.detect(checkpoint)
    if CONTEXT_KEY not in checkpoint:
        raise ModelLoadError(
            f"{name} has a UNet, but not one of the supported layouts (no cross-attention "
            f"where Stable Diffusion has one). Supported: {SUPPORTED}."
        )
    context_dim = int(checkpoint[CONTEXT_KEY].shape[1])
    if context_dim == 768:
        return "sd15"
    if context_dim == 1024:
        if prediction_type == "epsilon":
            return "sd2"
        if prediction_type is None and "base" in Path(filename).name.lower():
            return "sd2"
        return "sd2-v"
    raise ModelLoadError(
        f"{name} conditions on {context_dim}-wide text features, which matches no supported "
        f"family. Supported: {SUPPORTED}."
    )


# ---- reading ------------------------------------------------------------------------------


class _user_errors:
    """Turn library exceptions escaping a load into a ``ModelLoadError`` naming the model."""

    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc is None or isinstance(exc, ModelLoadError):
            return False
        if isinstance(exc, MemoryError):
            raise OutOfMemoryError(
                f"Not enough memory to load {self.path.name}; close other programs or choose "
                "a smaller model."
            ) from exc
        if isinstance(exc, Exception):
            raise ModelLoadError(
                f"Could not load the model at {self.path}: {exc}. The files may be incomplete "
                f"or not a supported model ({SUPPORTED})."
            ) from exc
        return False


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ModelLoadError(
            f"{path} is missing; the model's configuration is incomplete."
        ) from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelLoadError(f"{path} is not a readable JSON config ({exc}).") from exc
    if not isinstance(data, dict):
        raise ModelLoadError(f"{path} is not a JSON object, so it can't be a model config.")
    return data


def _read_configs(folder: Path) -> dict[str, dict[str, Any]]:
    return {
        "unet": _read_json(folder / "unet" / "config.json"),
        "vae": _read_json(folder / "vae" / "config.json"),
        "text_encoder": _read_json(folder / "text_encoder" / "config.json"),
        "scheduler": _read_json(folder / "scheduler" / "scheduler_config.json"),
    }


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors raises its own error types for bad headers/data
        raise ModelLoadError(
            f"{path.name} could not be read as a safetensors file ({exc}). It is probably "
            "truncated or corrupt; copy or download it again."
        ) from exc


def _read_torch_file(path: Path) -> dict[str, Any]:
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "Unsupported global" not in str(exc):  # not code, just broken
            raise ModelLoadError(
                f"{path.name} could not be read as a PyTorch checkpoint ({exc}). It is probably "
                "truncated or corrupt; copy or download it again."
            ) from exc
        raise ModelLoadError(
            f"{path.name} contains Python objects besides weights, which are not loaded for "
            "safety. Convert it to .safetensors, or use the .safetensors release of the model."
        ) from exc
    except Exception as exc:
        raise ModelLoadError(
            f"{path.name} could not be read as a PyTorch checkpoint ({exc}). It is probably "
            "truncated or corrupt; copy or download it again."
        ) from exc
    if not isinstance(state, Mapping):
        raise ModelLoadError(f"{path.name} does not contain a dictionary of weights.")
    return dict(state)


def _read_folder_weights(folder: Path) -> dict[str, torch.Tensor]:
    """The weights of one diffusers component folder (single, fp16-variant or sharded)."""
    for index_name in _WEIGHT_INDEXES:
        if (folder / index_name).is_file():
            shards = sorted(set(_read_json(folder / index_name).get("weight_map", {}).values()))
            state: dict[str, torch.Tensor] = {}
            for shard in shards:
                if not (folder / shard).is_file():
                    raise ModelLoadError(
                        f"{folder} is missing the weights shard {shard}; the download is "
                        "incomplete."
                    )
                state.update(read_checkpoint(folder / shard))
            return state
    for name in _WEIGHT_NAMES:
        if (folder / name).is_file():
            return read_checkpoint(folder / name)
    raise ModelLoadError(
        f"{folder} has no weights file (expected {_WEIGHT_NAMES[0]} or {_WEIGHT_NAMES[1]}). "
        "The download is probably incomplete; copy the whole model folder again."
    )


def _load_tokenizer(folder: Path, require_files: bool):
    """The folder's own CLIP tokenizer, or else ours (``assets/tokenizer/clip``) with the
    special tokens a ``tokenizer_config.json`` in ``folder`` names (SD 2.x pads with "!")."""
    from transformers import CLIPTokenizer

    own = any((folder / f).is_file() for f in ("vocab.json", "tokenizer.json"))
    if require_files and not own:
        raise ModelLoadError(
            f"{folder} has no tokenizer files (vocab.json and merges.txt); copy the complete "
            "model folder."
        )
    overrides: dict[str, Any] = {}
    if not own and (folder / "tokenizer_config.json").is_file():
        config = _read_json(folder / "tokenizer_config.json")
        for key in ("bos_token", "eos_token", "unk_token", "pad_token", "model_max_length"):
            if key in config:
                value = config[key]
                overrides[key] = value["content"] if isinstance(value, dict) else value
    try:
        return CLIPTokenizer.from_pretrained(
            str(folder if own else CLIP_TOKENIZER_DIR), **overrides
        )
    except Exception as exc:
        raise ModelLoadError(f"The tokenizer in {folder} could not be loaded ({exc}).") from exc


# ---- checks -------------------------------------------------------------------------------


def _check_pipeline_kind(index: dict[str, Any], path: Path) -> None:
    kind = str(index.get("_class_name", "an unknown pipeline"))
    if "unet" not in index and "transformer" in index:
        raise ModelLoadError(
            f"{path.name} is a transformer-based model ({kind}), not Stable Diffusion. "
            f"Supported: {SUPPORTED}."
        )
    unet_entry = index.get("unet")
    if (
        isinstance(unet_entry, list)
        and len(unet_entry) == 2
        and unet_entry[1]
        not in (
            None,
            "UNet2DConditionModel",
        )
    ):
        raise ModelLoadError(
            f"{path.name} uses a {unet_entry[1]}, not a Stable Diffusion UNet. Supported: "
            f"{SUPPORTED}."
        )


# UNet input channels we run: 4 (latents) for text-to-image, 9 for inpainting checkpoints
# (latents, mask, masked-image latents; ``Denoiser`` feeds the extra five)
INPAINT_IN_CHANNELS = 9
_UNET_IN_CHANNELS = (4, INPAINT_IN_CHANNELS)


def _refuse_in_channels(in_channels: int, name: str) -> None:
    if in_channels not in _UNET_IN_CHANNELS:
        raise ModelLoadError(
            f"{name} has a UNet with {in_channels} input channels (a depth or instruction "
            "variant); text-to-image (4) and inpainting (9) checkpoints are supported."
        )


def _check_unet_config(config: dict[str, Any], source: Path) -> None:
    _refuse_in_channels(int(config.get("in_channels", 4)), source.name)


def unet_in_channels(checkpoint: Mapping[str, Any]) -> int | None:
    """A single file's UNet input channels, read from its first convolution's weight."""
    w = checkpoint.get(UNET_PREFIX + "input_blocks.0.0.weight")
    return int(w.shape[1]) if w is not None and w.ndim == 4 else None


def fit_unet_config(config: dict[str, Any], checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """A single file's UNet config with the input channels its weights have: the configs we
    ship are text-to-image ones, and an inpainting file differs from them only there."""
    n = unet_in_channels(checkpoint)
    return config if n is None else {**config, "in_channels": n}


# key prefixes of diffusion models that are not Stable Diffusion UNets, with their names
_OTHER_FAMILIES = (
    ("joint_blocks.", "Stable Diffusion 3 (MMDiT)"),
    ("double_blocks.", "Flux"),
    ("double_stream_blocks.", "a Flux-like DiT"),
    ("model.diffusion_model.blocks.", "a DiT (PixArt, Wan or similar)"),
)


def _check_other_family(checkpoint: Mapping[str, Any], name: str) -> None:
    """One sentence for the well-known families that are not supported."""
    for prefix, family in _OTHER_FAMILIES:
        if any(k.startswith(prefix) or ("." + prefix) in k for k in list(checkpoint)[:2000]):
            raise ModelLoadError(
                f"{name} is {family}, which isn't supported. Supported: {SUPPORTED}."
            )


def _check_sd_layout(checkpoint: Mapping[str, Any], filename: str) -> None:
    """Is this a Stable-Diffusion-style single file at all?"""
    name = filename or "This checkpoint"
    if any(k.startswith(UNET_PREFIX) for k in checkpoint):
        n = unet_in_channels(checkpoint)
        if n is not None:
            _refuse_in_channels(n, name)
        return
    keys = list(checkpoint)
    if any("lora" in k.lower() for k in keys[:200]):
        hint = " It looks like a LoRA, which adapts a model but is not one."
    elif any(k.startswith(("encoder.", "decoder.")) for k in keys[:200]):
        hint = " It looks like a standalone VAE, which is only one part of a model."
    else:
        hint = ""
    raise ModelLoadError(
        f"{name} is not a Stable Diffusion checkpoint: it has no UNet weights "
        f"({UNET_PREFIX}*).{hint} Supported: {SUPPORTED}."
    )


def _check_components_present(checkpoint: Mapping[str, Any], filename: str) -> None:
    if not any(k.startswith(VAE_PREFIX) for k in checkpoint):
        raise ModelLoadError(
            f"{filename} has no VAE weights ({VAE_PREFIX}*); it must be a full checkpoint "
            "with UNet, VAE and text encoder."
        )
    if not any(k.startswith((CLIP_PREFIX, OPEN_CLIP_PREFIX)) for k in checkpoint):
        raise ModelLoadError(
            f"{filename} has no text encoder weights (cond_stage_model.*); it must be a full "
            "checkpoint with UNet, VAE and text encoder."
        )


# ---- building -----------------------------------------------------------------------------


def _instantiate(kind: str, config: dict[str, Any]):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    with torch.device("meta"):  # no memory, no random init: weights are assigned afterwards
        if kind == "unet":
            return UNet2DConditionModel.from_config(config)
        if kind == "vae":
            return AutoencoderKL.from_config(config)
        if kind == "text_encoder_2":  # SDXL's OpenCLIP bigG, with its pooled projection
            return CLIPTextModelWithProjection(CLIPTextConfig.from_dict(config))
        return CLIPTextModel(CLIPTextConfig.from_dict(config))


def _build(kind: str, config: dict[str, Any], state: dict[str, torch.Tensor], source: str):
    """Instantiate a component from its config and assign ``state`` to it, strictly."""
    what = {
        "unet": "UNet",
        "vae": "VAE",
        "text_encoder": "text encoder",
        "text_encoder_2": "second text encoder",
    }[kind]
    try:
        model = _instantiate(kind, config)
    except Exception as exc:
        raise ModelLoadError(f"The {what} config for {source} is invalid ({exc}).") from exc
    expected = model.state_dict()
    if kind.startswith("text_encoder"):
        state = _match_clip_prefix(state, expected)
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    mismatched = [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if mismatched:
        k = mismatched[0]
        raise ModelLoadError(
            f"The {what} weights in {source} don't match its config: {len(mismatched)} "
            f"tensor(s) have the wrong shape (e.g. {k} is {tuple(state[k].shape)} in the file "
            f"but {tuple(expected[k].shape)} in the config). The configs belong to a different "
            "model; use the ones that came with this checkpoint."
        )
    if missing or unexpected:
        detail = []
        if missing:
            detail.append(f"{len(missing)} missing (e.g. {missing[0]})")
        if unexpected:
            detail.append(f"{len(unexpected)} unexpected (e.g. {unexpected[0]})")
        raise ModelLoadError(
            f"The {what} weights in {source} don't match its config: {', '.join(detail)}. "
            f"The file may be incomplete or from an unsupported model ({SUPPORTED})."
        )
    # Copy into fresh memory: tensors read from a file can be views at odd offsets of one
    # buffer, and unaligned weights make CPU kernels slower and numerically different.
    floats = torch.float32 if kind == "vae" else _BUILD_DTYPE.get()
    dtype = {k: floats if v.is_floating_point() else v.dtype for k, v in state.items()}
    state = {k: v.to(dtype[k], copy=True) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    _materialize_position_ids(model)
    return model.eval()


def _materialize_position_ids(model: torch.nn.Module) -> None:
    """Non-persistent buffers are not in any state dict, so they are still on ``meta`` after
    assignment. CLIP's ``position_ids`` is the only one our components have."""
    for module_name, module in model.named_modules():
        for name, buf in list(module.named_buffers(recurse=False)):
            if not buf.is_meta:
                continue
            if name != "position_ids":
                raise RuntimeError(f"buffer {module_name}.{name} was not loaded")
            ids = torch.arange(buf.shape[-1]).expand(buf.shape)
            module.register_buffer(name, ids, persistent=False)


def _parts(unet, vae, text_encoder, tokenizer, scheduler_config, prediction_type):
    scheduler_config = dict(scheduler_config)
    scheduler_config.setdefault("prediction_type", "epsilon")
    if prediction_type is not None:
        if prediction_type not in ("epsilon", "v_prediction"):
            raise ModelLoadError(
                f"Unknown prediction type {prediction_type!r}; use 'epsilon' or 'v_prediction'."
            )
        scheduler_config["prediction_type"] = prediction_type
    return {
        "unet": unet,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "scheduler_config": scheduler_config,
        "vae_scale": float(vae.config.scaling_factor),
    }


def _match_clip_prefix(state: dict[str, torch.Tensor], expected: Mapping[str, Any]):
    """Map checkpoint keys with or without ``text_model.`` onto the installed transformers'
    naming; drop the ``position_ids`` buffer that older files carry."""
    out = {}
    for key, value in state.items():
        if key.endswith("position_ids") and key not in expected:
            continue
        if key not in expected:
            bare = key.removeprefix("text_model.")
            key = bare if bare in expected else "text_model." + bare
        out[key] = value
    return out


def _convert_text_encoder(checkpoint: dict[str, torch.Tensor], config: dict[str, Any]):
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_open_clip_checkpoint,
    )

    if any(k.startswith(OPEN_CLIP_PREFIX) for k in checkpoint):
        text_model = _instantiate("text_encoder", config)  # only its config is read
        return convert_open_clip_checkpoint(text_model, checkpoint, prefix=OPEN_CLIP_PREFIX)
    return convert_ldm_clip_checkpoint(checkpoint)
