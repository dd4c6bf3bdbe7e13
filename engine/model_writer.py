"""Write Stable Diffusion models to disk: diffusers folders, original-layout single files, and
the ``model_index.json`` that the demo-model export (``engine.training.export``) writes too.

Reading lives in ``engine.loaders``; only tests and the export write models.

diffusers ships the forward conversion (original → diffusers, ``convert_ldm_*_checkpoint``);
saving a single file needs the reverse, which lives here as small pure functions over key
names: UNet ``model.diffusion_model.*``, VAE ``first_stage_model.*``, text encoder
``cond_stage_model.transformer.*`` (OpenAI CLIP, SD 1.x) or ``cond_stage_model.model.*``
(OpenCLIP, SD 2.x, q/k/v fused).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ModelLoadError
from .loaders import (
    CLIP_PREFIX,
    OPEN_CLIP_PREFIX,
    UNET_PREFIX,
    VAE_PREFIX,
    sidecar_dir,
)

# What a ModelBundle or a parts dict must provide to be written.
PART_KEYS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler_config", "vae_scale")

# ---- saving ---------------------------------------------------------------------


def save_diffusers_folder(model: Any, path: str | os.PathLike) -> Path:
    """Write a ModelBundle or parts dict as a diffusers folder (safetensors weights)."""
    from safetensors.torch import save_file

    parts = as_parts(model)
    path = Path(path)
    _write_configs(parts, path)
    save_file(
        _cpu(parts["unet"].state_dict()),
        path / "unet" / "diffusion_pytorch_model.safetensors",
        metadata={"format": "pt"},
    )
    save_file(
        _cpu(parts["vae"].state_dict()),
        path / "vae" / "diffusion_pytorch_model.safetensors",
        metadata={"format": "pt"},
    )
    # "text_model." prefixed keys are what every transformers version reads.
    text_sd = {"text_model." + k: v for k, v in clip_keys(parts["text_encoder"]).items()}
    save_file(_cpu(text_sd), path / "text_encoder" / "model.safetensors", metadata={"format": "pt"})
    return path


def save_single_file(model: Any, path: str | os.PathLike, *, sidecar: bool = True) -> Path:
    """Write a ModelBundle or parts dict as one ``.safetensors`` in the original SD layout.

    With ``sidecar`` (default) the configs and tokenizer go to ``<name>.config/`` beside it, so
    models of any size (the tiny test model included) reload without further arguments.
    Text encoders with ``gelu`` activation are written in the OpenCLIP layout (SD 2.x),
    others in the OpenAI CLIP layout (SD 1.x)."""
    from safetensors.torch import save_file

    path = Path(path)
    if path.suffix.lower() != ".safetensors":
        raise ModelLoadError(f"Save single-file models as .safetensors, not {path.suffix!r}.")
    parts = as_parts(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(_cpu(to_original_state_dict(parts)), path, metadata={"format": "pt"})
    if sidecar:
        _write_configs(parts, sidecar_dir(path))
    return path


# ---- the original single-file layout ----------------------------------------------------


def as_parts(model: Any) -> dict[str, Any]:
    if isinstance(model, Mapping):
        missing = [k for k in PART_KEYS if k not in model]
        if missing:
            raise ValueError(f"model parts are missing {missing}")
        return dict(model)
    return {k: getattr(model, k) for k in PART_KEYS}


def to_original_state_dict(model: Any) -> dict[str, torch.Tensor]:
    """Diffusers/transformers weights → one state dict in the original SD key layout (the
    reverse of diffusers' ``convert_ldm_*_checkpoint``)."""
    parts = as_parts(model)
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    out: dict[str, torch.Tensor] = {}
    for key, value in unet.state_dict().items():
        out[UNET_PREFIX + _unet_key_to_original(key, unet.config)] = value
    n_up = len(vae.config.up_block_types)
    for key, value in vae.state_dict().items():
        new_key = _vae_key_to_original(key, n_up)
        if ".mid.attn_1." in new_key and new_key.endswith("weight") and value.ndim == 2:
            value = value[:, :, None, None]  # the original VAE attention uses 1x1 convolutions
        out[VAE_PREFIX + new_key] = value
    text_sd = clip_keys(text_encoder)
    if _is_open_clip(text_encoder.config):
        out.update(_open_clip_to_original(text_sd))
    else:
        out.update({CLIP_PREFIX + "text_model." + k: v for k, v in text_sd.items()})
    return out


def _is_open_clip(text_config) -> bool:
    """OpenCLIP (SD 2.x) text towers use exact GELU; OpenAI CLIP (SD 1.x) uses quick-GELU."""
    return getattr(text_config, "hidden_act", None) == "gelu"


def clip_keys(text_encoder) -> dict[str, torch.Tensor]:
    """A CLIPTextModel's weights without the ``text_model.`` prefix (transformers 5 has none,
    4.x has it) and without the ``position_ids`` buffer that some versions persist."""
    out = {}
    for key, value in text_encoder.state_dict().items():
        key = key.removeprefix("text_model.")
        if not key.endswith("position_ids"):
            out[key] = value
    return out


def _open_clip_to_original(text_sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers CLIP text weights → OpenCLIP names (q/k/v fused into ``in_proj``)."""
    top = {
        "embeddings.token_embedding.weight": "token_embedding.weight",
        "embeddings.position_embedding.weight": "positional_embedding",
        "final_layer_norm.weight": "ln_final.weight",
        "final_layer_norm.bias": "ln_final.bias",
    }
    inner = {
        "self_attn.out_proj": "attn.out_proj",
        "layer_norm1": "ln_1",
        "layer_norm2": "ln_2",
        "mlp.fc1": "mlp.c_fc",
        "mlp.fc2": "mlp.c_proj",
    }
    out: dict[str, torch.Tensor] = {}
    qkv: dict[tuple[str, str], dict[str, torch.Tensor]] = {}
    for key, value in text_sd.items():
        if key in top:
            out[OPEN_CLIP_PREFIX + top[key]] = value
            continue
        m = re.fullmatch(r"encoder\.layers\.(\d+)\.(.+)\.(weight|bias)", key)
        if not m:
            raise ValueError(f"unexpected text encoder weight {key}")
        layer, name, kind = m.groups()
        base = f"{OPEN_CLIP_PREFIX}transformer.resblocks.{layer}."
        proj = re.fullmatch(r"self_attn\.([qkv])_proj", name)
        if proj:
            qkv.setdefault((base, kind), {})[proj.group(1)] = value
        else:
            out[f"{base}{inner[name]}.{kind}"] = value
    for (base, kind), parts in qkv.items():
        out[f"{base}attn.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]])
    return out


_RESNET_NAMES = {  # diffusers ResnetBlock2D → original ResBlock
    "norm1": "in_layers.0",
    "conv1": "in_layers.2",
    "norm2": "out_layers.0",
    "conv2": "out_layers.3",
    "time_emb_proj": "emb_layers.1",
    "conv_shortcut": "skip_connection",
}
_UNET_TOP = {
    "time_embedding.linear_1": "time_embed.0",
    "time_embedding.linear_2": "time_embed.2",
    "conv_in": "input_blocks.0.0",
    "conv_norm_out": "out.0",
    "conv_out": "out.2",
}


def _resnet_to_original(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return f"{_RESNET_NAMES[head]}.{tail}"


def _unet_key_to_original(key: str, config) -> str:
    """Original UNet numbering: ``input_blocks`` are conv_in, then per level
    ``layers_per_block`` (resnet, attention) pairs and a downsampler; ``output_blocks`` are
    per level ``layers_per_block + 1`` (resnet, attention) with the upsampler appended to the
    level's last one; the middle block is resnet, attention, resnet."""
    per_level = int(config.layers_per_block) + 1
    m = re.fullmatch(r"down_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = 1 + level * per_level + j
        if kind == "resnets":
            return f"input_blocks.{block}.0.{_resnet_to_original(rest)}"
        return f"input_blocks.{block}.1.{rest}"
    m = re.fullmatch(r"down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"input_blocks.{(int(m[1]) + 1) * per_level}.0.op.{m[2]}"
    m = re.fullmatch(r"mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"middle_block.{2 * int(m[1])}.{_resnet_to_original(m[2])}"
    m = re.fullmatch(r"mid_block\.attentions\.0\.(.+)", key)
    if m:
        return f"middle_block.1.{m[1]}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.(resnets|attentions)\.(\d+)\.(.+)", key)
    if m:
        level, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = level * per_level + j
        if kind == "resnets":
            return f"output_blocks.{block}.0.{_resnet_to_original(rest)}"
        return f"output_blocks.{block}.1.{rest}"
    m = re.fullmatch(r"up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        level = int(m[1])
        has_attention = "CrossAttn" in config.up_block_types[level]
        slot = 2 if has_attention else 1
        return f"output_blocks.{level * per_level + per_level - 1}.{slot}.conv.{m[2]}"
    module, _, param = key.rpartition(".")
    if module in _UNET_TOP:
        return f"{_UNET_TOP[module]}.{param}"
    raise ValueError(f"cannot map UNet weight {key} to the original layout")


_VAE_ATTENTION_NAMES = {
    "group_norm": "norm",
    "to_q": "q",
    "to_k": "k",
    "to_v": "v",
    "to_out.0": "proj_out",
}


def _vae_key_to_original(key: str, n_up: int) -> str:
    """Original VAE numbering: ``down.{i}.block.{j}`` / ``up.{i}.block.{j}`` with the decoder's
    levels counted from the lowest resolution up (reversed w.r.t. diffusers), ``mid.block_1``,
    ``mid.attn_1``, ``mid.block_2``, ``nin_shortcut`` and ``norm_out``."""
    key = key.replace("conv_shortcut", "nin_shortcut")
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"{m[1]}.mid.block_{int(m[2]) + 1}.{m[3]}"
    m = re.fullmatch(r"(encoder|decoder)\.mid_block\.attentions\.0\.(.+)\.(weight|bias)", key)
    if m:
        return f"{m[1]}.mid.attn_1.{_VAE_ATTENTION_NAMES[m[2]]}.{m[3]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.block.{m[2]}.{m[3]}"
    m = re.fullmatch(r"encoder\.down_blocks\.(\d+)\.downsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"encoder.down.{m[1]}.downsample.conv.{m[2]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.resnets\.(\d+)\.(.+)", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m[1])}.block.{m[2]}.{m[3]}"
    m = re.fullmatch(r"decoder\.up_blocks\.(\d+)\.upsamplers\.0\.conv\.(.+)", key)
    if m:
        return f"decoder.up.{n_up - 1 - int(m[1])}.upsample.conv.{m[2]}"
    m = re.fullmatch(r"(encoder|decoder)\.conv_norm_out\.(.+)", key)
    if m:
        return f"{m[1]}.norm_out.{m[2]}"
    if re.fullmatch(r"(encoder|decoder)\.conv_(in|out)\.(weight|bias)", key) or re.fullmatch(
        r"(post_)?quant_conv\.(weight|bias)", key
    ):
        return key
    raise ValueError(f"cannot map VAE weight {key} to the original layout")


# ---- saving helpers -----------------------------------------------------------------------


def _cpu(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in state.items()}


def _write_json(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def write_model_index(folder: Path, unet, vae, text_encoder, scheduler: str) -> None:
    """The pipeline's ``model_index.json``, stamped with the installed diffusers version."""
    from diffusers import __version__ as diffusers_version

    _write_json(
        Path(folder) / "model_index.json",
        {
            "_class_name": "StableDiffusionPipeline",
            "_diffusers_version": diffusers_version,
            "feature_extractor": [None, None],
            "requires_safety_checker": False,
            "safety_checker": [None, None],
            "scheduler": ["diffusers", scheduler],
            "text_encoder": ["transformers", type(text_encoder).__name__],
            "tokenizer": ["transformers", "CLIPTokenizer"],
            "unet": ["diffusers", type(unet).__name__],
            "vae": ["diffusers", type(vae).__name__],
        },
    )


def _write_configs(parts: dict[str, Any], folder: Path) -> None:
    """Everything of a diffusers folder except the weights: model_index, component configs,
    tokenizer files, scheduler config."""
    unet, vae, text_encoder = parts["unet"], parts["vae"], parts["text_encoder"]
    scheduler = parts["scheduler_config"].get("_class_name", "DDIMScheduler")
    write_model_index(folder, unet, vae, text_encoder, scheduler)
    _write_json(folder / "unet" / "config.json", json.loads(unet.to_json_string()))
    vae_config = json.loads(vae.to_json_string())
    vae_config["scaling_factor"] = float(parts["vae_scale"])
    _write_json(folder / "vae" / "config.json", vae_config)
    _write_json(folder / "text_encoder" / "config.json", text_encoder.config.to_dict())
    parts["tokenizer"].save_pretrained(str(folder / "tokenizer"))
    _write_json(folder / "scheduler" / "scheduler_config.json", dict(parts["scheduler_config"]))
