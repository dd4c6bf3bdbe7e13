"""SDXL: what differs from SD 1.x/2.x, in one place.

Podell et al. 2023, "SDXL: Improving Latent Diffusion Models for High-Resolution Image
Synthesis". Against SD 1.x/2.x an SDXL model has

- two text encoders (base: OpenAI CLIP ViT-L and OpenCLIP ViT-bigG; the refiner: bigG only):
  the UNet's context is the *penultimate* hidden states of each, concatenated along the
  feature axis (§2.1), and the bigG encoder's pooled, projected output is a global vector;
- micro-conditioning (§2.2): the original image size, the crop's top-left corner and the
  target size (base), or the original size, the crop and an aesthetic score (refiner), each
  number Fourier-embedded and added with the pooled text vector to the timestep embedding
  (diffusers: ``added_cond_kwargs={"text_embeds", "time_ids"}``).

How this stays out of the algorithms: an SDXL embedding is one tensor, 1 x (L + 2) x D —
the L context rows, then a row holding the pooled vector (zero-padded to D) and a row whose
first entry is the aesthetic score (refiner; 0 for the base). Everything algorithms do to
embeddings (batch, cache, save with an inversion, optimise as null-text does) carries the
pooled part along; only ``Denoiser.model_output`` unpacks it (``unpack``). The size ids are
not packed: they follow the latents handed to the UNet (original = target = the working
size, crop (0, 0): the defaults of the paper's inference and of diffusers' pipelines).

The two encoders are 0.82 B parameters that idle while the UNet denoises, so on CUDA they
live on the CPU and visit the GPU only to encode (``offloads_text_encoders``; the visits are
the ``Denoiser``'s, around its cache of encodings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

BASE, REFINER = "sdxl", "sdxl-refiner"
FAMILIES = (BASE, REFINER)
EXTRA_ROWS = 2  # the pooled-vector row and the aesthetic-score row after the context
# diffusers' StableDiffusionXLImg2ImgPipeline defaults for the refiner's aesthetic score
AESTHETIC_SCORE = 6.0
NEGATIVE_AESTHETIC_SCORE = 2.5

# single-file (SGM, "generative-models") prefixes of the text encoders
SGM_PREFIX = "conditioner.embedders."
SGM_CLIP_L = SGM_PREFIX + "0.transformer."  # base: OpenAI CLIP ViT-L, transformers layout
SGM_BIGG = SGM_PREFIX + "1.model."  # base: OpenCLIP ViT-bigG
SGM_BIGG_REFINER = SGM_PREFIX + "0.model."  # refiner: OpenCLIP ViT-bigG is its only encoder
ADD_EMBED_KEY = "model.diffusion_model.label_emb.0.0.weight"  # in_features = ids + pooled


def time_id_count(unet_config: dict[str, Any], pooled_dim: int) -> int:
    """How many micro-conditioning numbers the UNet embeds: 6 (base: size, crop, target
    size) or 5 (refiner: size, crop, aesthetic score)."""
    total = int(unet_config["projection_class_embeddings_input_dim"]) - pooled_dim
    return total // int(unet_config["addition_time_embed_dim"])


def family_of(unet_config: dict[str, Any], pooled_dim: int) -> str:
    return REFINER if time_id_count(unet_config, pooled_dim) == 5 else BASE


def is_sdxl(bundle) -> bool:
    return getattr(bundle, "family", "") in FAMILIES


# ---- conditioning ---------------------------------------------------------------------------


def encoders(bundle) -> list[tuple[Any, Any]]:
    """(tokenizer, text encoder) pairs in the order their hidden states are concatenated."""
    pairs = []
    if bundle.text_encoder is not None:
        pairs.append((bundle.tokenizer, bundle.text_encoder))
    pairs.append((bundle.tokenizer_2, bundle.text_encoder_2))
    return pairs


def encode_window(bundle, chunk: list[int], device) -> tuple[torch.Tensor, torch.Tensor]:
    """One window of token ids (without BOS/EOS, at most 75) through every encoder: the
    penultimate hidden states concatenated (1 x 77 x D) and the last encoder's pooled,
    projected output (1 x P). Each encoder's ids are padded with its own tokenizer's pad
    token (the base's second tokenizer pads with "!", as the released model does)."""
    hidden = []
    pooled = None
    for tok, enc in encoders(bundle):
        pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
        ids = [tok.bos_token_id, *chunk, tok.eos_token_id]
        ids += [pad] * (tok.model_max_length - len(ids))
        out = enc(torch.tensor([ids], device=device), output_hidden_states=True)
        hidden.append(out.hidden_states[-2])  # SDXL §2.1: the penultimate layer
        pooled = out.text_embeds if hasattr(out, "text_embeds") else pooled
    return torch.cat(hidden, dim=-1), pooled


def pack(hidden: torch.Tensor, pooled: torch.Tensor, aesthetic: float | None) -> torch.Tensor:
    """Context 1 x L x D and pooled 1 x P (P ≤ D) → one embedding 1 x (L + 2) x D (see the
    module docstring)."""
    b, _, d = hidden.shape
    rows = hidden.new_zeros(b, EXTRA_ROWS, d)
    rows[:, 0, : pooled.shape[-1]] = pooled.to(hidden.dtype)
    if aesthetic is not None:
        rows[:, 1, 0] = aesthetic
    return torch.cat([hidden, rows], dim=1)


def with_aesthetic(emb: torch.Tensor, score: float) -> torch.Tensor:
    out = emb.clone()
    out[:, -1, 0] = score
    return out


def unpack(emb: torch.Tensor, pooled_dim: int):
    """The inverse of ``pack``: (context, pooled, aesthetic score per batch row). The score
    is a setting, not text: it is detached, so null-text inversion optimises the context and
    the pooled vector only."""
    return emb[:, :-EXTRA_ROWS], emb[:, -EXTRA_ROWS, :pooled_dim], emb[:, -1, 0].detach()


def time_ids(size_hw: tuple[int, int], aesthetic: torch.Tensor, refiner: bool) -> torch.Tensor:
    """``add_time_ids`` per batch row for an image of ``size_hw`` pixels (SDXL §2.2):
    original size = target size = the working size, crop (0, 0) — the defaults of the
    paper's inference and of diffusers' SDXL pipelines; the refiner's last number is the
    aesthetic score each embedding carries."""
    h, w = size_hw
    n, device = aesthetic.shape[0], aesthetic.device
    if refiner:  # original size, crop, aesthetic score (the refiner's SGM conditioner)
        head = torch.tensor([[h, w, 0, 0]], dtype=torch.float32, device=device).expand(n, 4)
        return torch.cat([head, aesthetic.float()[:, None]], dim=1)
    # original size, crop top-left, target size
    return torch.tensor([[h, w, 0, 0, h, w]], dtype=torch.float32, device=device).expand(n, 6)


# ---- text encoders off the GPU between encodes ---------------------------------------------

ENV_OFFLOAD = "DIFFUSION_EDITOR_OFFLOAD_TEXT_ENCODERS"
CPU = torch.device("cpu")


def offload_default(device: torch.device, family: str) -> bool:
    """Whether the text encoders leave the device between encodes when nobody said:
    ``DIFFUSION_EDITOR_OFFLOAD_TEXT_ENCODERS`` if set (``0`` off, ``1`` on), else on for SDXL
    on CUDA, whose two encoders (0.82 B parameters, 1.6 GB in fp16) idle while the UNet
    denoises. On the CPU they already are where they would go, and MPS shares the host's
    memory: nothing to free there."""
    from .fast import env_switch  # the project's one vocabulary for on/off switches

    return env_switch(ENV_OFFLOAD, device.type == "cuda" and family in FAMILIES)


def offloads_text_encoders(bundle) -> bool:
    """The bundle's ``offload_text_encoders`` option: True or False where someone set it
    (``keep_text_encoders_on_device``), else ``offload_default``.
    Under it the encoders live on the CPU and visit the device only to encode (``Denoiser``);
    encodings are cached per prompt, so only a new prompt pays the two copies."""
    chosen = bundle.offload_text_encoders
    if chosen is None:
        return offload_default(bundle.device, bundle.family)
    return bool(chosen)


def place_text_encoders(bundle, on_device: bool) -> None:
    """Every text encoder to the bundle's device (True) or to the CPU (False), dtype kept.
    Moving them, rather than encoding on the CPU and moving the embedding, gives the very
    numbers an encoder kept on the device gives (same device, same fp16 kernels; on the CPU
    fp16 would have to become fp32) and costs a copy instead of a slow bigG pass on the CPU.
    The memory freed stays in PyTorch's CUDA cache, for the UNet's activations."""
    target = bundle.device if on_device else CPU
    for model in (bundle.text_encoder, bundle.text_encoder_2):
        if model is not None:
            model.to(target)


def keep_text_encoders_on_device(bundle) -> None:
    """Turn the option off and bring the encoders back: for a diffusers pipeline sharing
    the bundle's components, which runs its encoders wherever they are."""
    bundle.offload_text_encoders = False
    place_text_encoders(bundle, on_device=True)


# ---- builtin:tiny-xl ------------------------------------------------------------------------


def tiny_xl_components(seed: int = 0) -> dict[str, Any]:
    """A random-weight SDXL base in miniature: DownBlock2D first (no attention at full
    resolution), linear projections, two transformer layers in the inner level, two CLIP
    encoders (the second with a projection and exact GELU, as OpenCLIP), micro-conditioning
    of 6 ids, SDXL's scheduler and VAE scale. 64 px native size, like ``builtin:tiny``."""
    from diffusers import UNet2DConditionModel
    from transformers import (
        CLIPTextConfig,
        CLIPTextModel,
        CLIPTextModelWithProjection,
        CLIPTokenizer,
    )

    from .loaders import CLIP_TOKENIZER_DIR, CONFIGS_DIR, _read_json
    from .models import TINY_CLIP, tiny_vae

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        transformer_layers_per_block=(1, 2),
        attention_head_dim=(2, 4),
        cross_attention_dim=64,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 6 * 8,
    )
    vae = tiny_vae(scaling_factor=0.13025, force_upcast=True)  # SDXL's VAE settings
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP, hidden_act="quick_gelu"))
    text_encoder_2 = CLIPTextModelWithProjection(CLIPTextConfig(**TINY_CLIP, hidden_act="gelu"))
    tokenizer = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))
    tokenizer_2 = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR), pad_token="!")
    scheduler = _read_json(CONFIGS_DIR / BASE / "scheduler" / "scheduler_config.json")
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "text_encoder_2": text_encoder_2.eval(),
        "tokenizer_2": tokenizer_2,
        "scheduler_config": scheduler,
        "vae_scale": 0.13025,
        "family": BASE,
        "zero_empty_negative": True,
    }


# ---- loading --------------------------------------------------------------------------------


def is_sdxl_index(index: dict[str, Any]) -> bool:
    return "XL" in str(index.get("_class_name", "")) or "text_encoder_2" in index


def _has_part(index: dict[str, Any], part: str) -> bool:
    entry = index.get(part)
    return isinstance(entry, list) and len(entry) == 2 and entry[1] is not None


def load_folder(path: Path, index: dict[str, Any], prediction_type: str | None):
    """A diffusers SDXL folder: ``text_encoder_2/`` and ``tokenizer_2/``, plus
    ``text_encoder/`` and ``tokenizer/`` unless the index lists them as null (the refiner)."""
    from .errors import ModelLoadError
    from .loaders import (
        _build,
        _check_unet_config,
        _load_tokenizer,
        _read_folder_weights,
        _read_json,
    )

    parts = ["unet", "vae", "text_encoder_2", "tokenizer_2", "scheduler"]
    single_encoder = not _has_part(index, "text_encoder")
    if not single_encoder:
        parts += ["text_encoder", "tokenizer"]
    for part in parts:
        if not (path / part).is_dir():
            raise ModelLoadError(
                f"The SDXL model folder {path} is missing its {part}/ folder. Copy or download "
                "the complete model folder."
            )
    configs = {
        "unet": _read_json(path / "unet" / "config.json"),
        "vae": _read_json(path / "vae" / "config.json"),
        "text_encoder_2": _read_json(path / "text_encoder_2" / "config.json"),
        "scheduler": _read_json(path / "scheduler" / "scheduler_config.json"),
    }
    if not single_encoder:
        configs["text_encoder"] = _read_json(path / "text_encoder" / "config.json")
    _check_unet_config(configs["unet"], path)  # SDXL inpainting / instruct variants
    built = {}
    for kind in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if kind in configs:
            state = _read_folder_weights(path / kind)
            built[kind] = _build(kind, configs[kind], state, f"{path}/{kind}")
    tokenizer_2 = _load_tokenizer(path / "tokenizer_2", require_files=True)
    tokenizer = (
        tokenizer_2 if single_encoder else _load_tokenizer(path / "tokenizer", require_files=True)
    )
    force_zeros = bool(index.get("force_zeros_for_empty_prompt", not single_encoder))
    return parts_dict(built, tokenizer, tokenizer_2, configs, force_zeros, prediction_type)


def parts_dict(built, tokenizer, tokenizer_2, configs, force_zeros, prediction_type):
    from .errors import ModelLoadError
    from .loaders import _parts

    pooled_dim = int(built["text_encoder_2"].config.projection_dim)
    width = int(configs["unet"]["cross_attention_dim"])
    if pooled_dim > width:  # no SDXL-class model is like this; packing needs it (see above)
        raise ModelLoadError(
            f"This SDXL-like model's pooled text vector ({pooled_dim}) is wider than its "
            f"context ({width}), which Diffusion Editor does not support."
        )
    parts = _parts(
        built["unet"],
        built["vae"],
        built.get("text_encoder"),
        tokenizer,
        configs["scheduler"],
        prediction_type,
    )
    parts.update(
        text_encoder_2=built["text_encoder_2"],
        tokenizer_2=tokenizer_2,
        family=family_of(configs["unet"], pooled_dim),
        zero_empty_negative=force_zeros,
    )
    return parts


def is_sgm(checkpoint) -> bool:
    return ADD_EMBED_KEY in checkpoint or any(k.startswith(SGM_PREFIX) for k in checkpoint)


def detect(checkpoint) -> str:
    """Base or refiner from an SGM single file's weights: the refiner's added embedding
    takes 5 ids (aesthetic score instead of target size), the base's 6; with bigG's 1280-wide
    pooled vector and 256 features per id that is 2560 vs 2816 inputs. Without that tensor,
    the text encoders tell: the base has two, the refiner one."""
    weight = checkpoint.get(ADD_EMBED_KEY)
    if weight is not None and weight.ndim == 2:
        return REFINER if int(weight.shape[1]) == 1280 + 5 * 256 else BASE
    return BASE if any(k.startswith(SGM_BIGG) for k in checkpoint) else REFINER


def load_single_file(path: Path, checkpoint, config_dir: Path, prediction_type: str | None):
    """An SGM-layout checkpoint with the configs in ``config_dir`` (diffusers layout)."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_clip_checkpoint,
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
        convert_open_clip_checkpoint,
    )

    from .errors import ModelLoadError
    from .loaders import _build, _instantiate, _load_tokenizer, _read_json, fit_unet_config

    configs = {
        "unet": _read_json(config_dir / "unet" / "config.json"),
        "vae": _read_json(config_dir / "vae" / "config.json"),
        "text_encoder_2": _read_json(config_dir / "text_encoder_2" / "config.json"),
        "scheduler": _read_json(config_dir / "scheduler" / "scheduler_config.json"),
    }
    # v-prediction SDXL files (e.g. NoobAI-XL V-Pred) carry marker tensors, as ComfyUI reads
    # them: "v_pred", and "ztsnr" for a schedule rescaled to zero terminal SNR
    if prediction_type is None and "v_pred" in checkpoint:
        prediction_type = "v_prediction"
    if "ztsnr" in checkpoint:
        configs["scheduler"] = {**configs["scheduler"], "rescale_betas_zero_snr": True}
    two = any(k.startswith(SGM_CLIP_L) for k in checkpoint)
    big_prefix = SGM_BIGG if two else SGM_BIGG_REFINER
    if not any(k.startswith(big_prefix) for k in checkpoint):
        raise ModelLoadError(
            f"{path.name} is an SDXL checkpoint without its OpenCLIP text encoder "
            f"({big_prefix}*); it must be a full checkpoint with UNet, VAE and text encoders."
        )
    if not any(k.startswith("first_stage_model.") for k in checkpoint):
        raise ModelLoadError(
            f"{path.name} has no VAE weights (first_stage_model.*); it must be a full "
            "checkpoint with UNet, VAE and text encoders."
        )
    configs["unet"] = fit_unet_config(configs["unet"], checkpoint)  # 9: inpainting
    unet = convert_ldm_unet_checkpoint(checkpoint, configs["unet"])
    vae = convert_ldm_vae_checkpoint(checkpoint, configs["vae"])
    built = {
        "unet": _build("unet", configs["unet"], unet, path.name),
        "vae": _build("vae", configs["vae"], vae, path.name),
    }
    shell = _instantiate("text_encoder_2", configs["text_encoder_2"])  # only its config is read
    big = convert_open_clip_checkpoint(shell, checkpoint, prefix=big_prefix)
    built["text_encoder_2"] = _build("text_encoder_2", configs["text_encoder_2"], big, path.name)
    tokenizer_2 = _load_tokenizer(config_dir / "tokenizer_2", require_files=False)
    tokenizer = tokenizer_2
    if two:
        configs["text_encoder"] = _read_json(config_dir / "text_encoder" / "config.json")
        clip = convert_ldm_clip_checkpoint(checkpoint, remove_prefix=SGM_CLIP_L)
        clip = {k: v for k, v in clip.items() if not k.startswith(SGM_PREFIX)}
        built["text_encoder"] = _build("text_encoder", configs["text_encoder"], clip, path.name)
        tokenizer = _load_tokenizer(config_dir / "tokenizer", require_files=False)
    index_file = config_dir / "model_index.json"
    index = _read_json(index_file) if index_file.is_file() else {}
    force_zeros = bool(index.get("force_zeros_for_empty_prompt", two))
    return parts_dict(built, tokenizer, tokenizer_2, configs, force_zeros, prediction_type)
