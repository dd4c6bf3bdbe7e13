"""The model bundle: everything a denoising loop needs, loaded once on the engine thread.

``load_model(spec)`` accepts
- ``builtin:tiny``  a tiny random-weight SD-architecture model built from config (tests);
- ``builtin:tiny-xl``  the same for SDXL's architecture (``engine.sdxl``);
- ``builtin:demo``  the project's trained demo model under ``assets/models/demo``;
- ``builtin:demo-lcm``  the demo model distilled for 2-8 steps (``assets/models/demo-lcm``);
- ``builtin:tiny-inpaint``  ``builtin:tiny`` with a 9-channel inpainting UNet (tests);
- ``builtin:demo-inpaint``  the demo model fine-tuned to inpaint (``assets/models/demo-inpaint``);
- a diffusers folder in the Stable Diffusion layout, or a single ``.safetensors``/``.ckpt``
  checkpoint in the original SD layout (see ``engine.loaders``).
Nothing here downloads: ``engine.offline`` sets the hub's offline switches first.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import sdxl
from . import vae as vae_ops
from .errors import ModelLoadError, NonFiniteError
from .loaders import ASSETS, CLIP_TOKENIZER_DIR, FAMILIES, load_diffusers_folder, load_path
from .schedule import Schedule

log = logging.getLogger(__name__)

DEMO_MODEL_DIR = ASSETS / "models" / "demo"
# the demo model distilled into a latent consistency model (engine.training.distill)
DEMO_LCM_DIR = ASSETS / "models" / "demo-lcm"
# the demo model fine-tuned as an inpainting model (engine.training.train_inpaint)
DEMO_INPAINT_DIR = ASSETS / "models" / "demo-inpaint"

# SD 1.5's scheduler config in the form diffusers writes it; our tiny and demo models use
# the same so every code path matches real checkpoints.
SD15_SCHEDULER_CONFIG: dict[str, Any] = {
    "_class_name": "DDIMScheduler",
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "clip_sample": False,
    "prediction_type": "epsilon",
    "timestep_spacing": "leading",
}


@dataclass
class ModelBundle:
    """A loaded latent diffusion model. ``vae_scale`` maps VAE latents to unit variance."""

    name: str
    unet: Any
    vae: Any
    text_encoder: Any
    tokenizer: Any
    scheduler_config: dict[str, Any]
    device: torch.device
    dtype: torch.dtype
    vae_scale: float
    # a noise-aware latent classifier (engine.classifier) where the model ships one in
    # ``classifier/``: it enables classifier guidance
    classifier: Any = None
    # SDXL (engine.sdxl): the second text encoder and its tokenizer (the refiner has only
    # these; its ``text_encoder`` is None and ``tokenizer`` is ``tokenizer_2``), and whether
    # an empty negative prompt means zero embeddings (diffusers' force_zeros_for_empty_prompt)
    text_encoder_2: Any = None
    tokenizer_2: Any = None
    zero_empty_negative: bool = False
    # a key of loaders.FAMILIES, or "sd" for an SD-architecture model of another size
    family: str = "sd"
    tile_above: int = vae_ops.TILE_ABOVE  # pixels; larger decodes run on tiles (engine.vae)
    # SDXL's text encoders wait on the CPU between encodes (engine.sdxl): None = the default
    # for the device (on for CUDA, DIFFUSION_EDITOR_OFFLOAD_TEXT_ENCODERS overrides it)
    offload_text_encoders: bool | None = None
    schedule: Schedule = field(init=False)

    def __post_init__(self):
        self.schedule = Schedule.from_config(self.scheduler_config)

    @property
    def prediction_type(self) -> str:
        return self.schedule.prediction_type

    @property
    def family_name(self) -> str:
        """The model family in words, as the load is logged."""
        return FAMILIES.get(self.family, "Stable-Diffusion-architecture model")

    @property
    def vae_factor(self) -> int:
        """Pixels per latent cell (8 for SD)."""
        return 2 ** (len(self.vae.config.block_out_channels) - 1)

    @property
    def latent_channels(self) -> int:
        return int(self.unet.config.out_channels)

    @property
    def inpainting(self) -> bool:
        """An inpainting UNet: latents, mask and masked-image latents in (SD: 4 + 1 + 4)."""
        return int(self.unet.config.in_channels) == 2 * self.latent_channels + 1

    @property
    def native_size(self) -> int:
        """The image side the UNet was trained at (512 for SD 1.x, 768 for SD 2.x-v)."""
        return int(self.unet.config.sample_size) * self.vae_factor

    @torch.no_grad()
    def encode(self, image: np.ndarray) -> torch.Tensor:
        """uint8 HxWx3 (sides multiples of ``vae_factor``) → scaled latents 1xCxhxw.
        Uses the posterior mean: editing wants a deterministic encoding."""
        x = torch.from_numpy(np.array(image, copy=True)).to(self.device)
        x = x.permute(2, 0, 1)[None].float() / 127.5 - 1.0
        return vae_ops.encode_mean(self.vae, x).to(self.dtype) * self.vae_scale

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, check_finite: bool = False) -> np.ndarray:
        """Scaled latents 1xCxhxw → uint8 HxWx3; ``check_finite``: NaN/inf pixels raise
        ``NonFiniteError`` instead of becoming black."""
        x = vae_ops.decode(self.vae, latents.to(self.device) / self.vae_scale, self.tile_above)
        if check_finite and not bool(torch.isfinite(x).all()):
            dtype = str(self.dtype).replace("torch.", "")
            raise NonFiniteError(
                f"The VAE produced NaN/inf values decoding the image (it ran in {dtype}); "
                "try fp32 (--dtype fp32)."
            )
        x = ((x[0].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
        return x.permute(1, 2, 0).cpu().numpy()


# ---- device policy ---------------------------------------------------------------------


def _device(name) -> torch.device:
    """A device the user named, checked: it must parse and be present on this machine."""
    try:
        dev = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ModelLoadError(
            f"Unknown device {name!r}; use cuda (or cuda:N), mps or cpu."
        ) from None
    if dev.type == "cuda":
        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        if count == 0:
            raise ModelLoadError("CUDA is not available on this machine; use --device cpu.")
        if dev.index is not None and dev.index >= count:
            raise ModelLoadError(
                f"There is no {dev}; this machine has {count} CUDA device(s) (cuda:0 to "
                f"cuda:{count - 1})."
            )
    elif dev.type == "mps":
        if not (getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()):
            raise ModelLoadError("MPS is not available on this machine; use --device cpu.")
    elif dev.type != "cpu":
        raise ModelLoadError(f"The device {name!r} is not supported; use cuda, mps or cpu.")
    return dev


def pick_device(device: str | None = None, dtype: str | None = None):
    """CUDA (fp16) > MPS > CPU (fp32), unless the caller says otherwise."""
    if device in (None, "auto"):
        if torch.cuda.is_available():
            device = "cuda"
        elif getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            device = "mps"
        else:
            device = "cpu"
    dev = _device(device)
    if dtype in (None, "auto"):
        dt = torch.float16 if dev.type == "cuda" else torch.float32
    else:
        names = {
            "fp16": torch.float16,
            "float16": torch.float16,
            "fp32": torch.float32,
            "float32": torch.float32,
            "bf16": torch.bfloat16,
            "bfloat16": torch.bfloat16,
        }
        if dtype not in names:
            raise ModelLoadError(f"Unknown dtype {dtype!r}; use one of {sorted(names)}.")
        dt = names[dtype]
    if dev.type == "cpu" and dt == torch.float16:
        dt = torch.float32  # fp16 convolutions on CPU are slow or unsupported
    return dev, dt


# ---- builtin:tiny ------------------------------------------------------------------------


# the tiny models' CLIP text encoders in miniature (CLIP's real vocabulary and 77 positions)
TINY_CLIP = dict(
    vocab_size=49408,
    hidden_size=32,
    intermediate_size=37,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    projection_dim=32,
)


def tiny_vae(**config) -> Any:
    """The tiny models' random-weight VAE: 8x down, 4 latent channels, 64 px; ``config``
    overrides (SDXL's scaling factor and fp16 upcast for ``builtin:tiny-xl``)."""
    from diffusers import AutoencoderKL

    return AutoencoderKL(
        **{
            "in_channels": 3,
            "out_channels": 3,
            "down_block_types": ("DownEncoderBlock2D",) * 4,
            "up_block_types": ("UpDecoderBlock2D",) * 4,
            "block_out_channels": (16, 16, 32, 32),
            "layers_per_block": 1,
            "norm_num_groups": 8,
            "latent_channels": 4,
            "sample_size": 64,
            **config,
        }
    )


def tiny_components(seed: int = 0, in_channels: int = 4) -> dict[str, Any]:
    """A random-weight model with SD's architecture in miniature: 8x VAE, 4 latent channels,
    cross-attention UNet, CLIP text encoder and CLIP's real tokenizer. 64 px native size.
    ``in_channels`` 9 makes its UNet an inpainting one (``builtin:tiny-inpaint``)."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(
        sample_size=8,
        in_channels=in_channels,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=32,
        attention_head_dim=8,
    )
    vae = tiny_vae()
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_CLIP))
    tokenizer = CLIPTokenizer.from_pretrained(str(CLIP_TOKENIZER_DIR))
    return {
        "unet": unet.eval(),
        "vae": vae.eval(),
        "text_encoder": text_encoder.eval(),
        "tokenizer": tokenizer,
        "scheduler_config": dict(SD15_SCHEDULER_CONFIG),
        "vae_scale": 0.18215,
    }


def _finish(name: str, parts: dict[str, Any], device: str | None, dtype: str | None):
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # its casting notes are noise for our users
    dev, dt = pick_device(device, dtype)
    parts.setdefault("family", _sd_family(parts))
    # straight to the VAE's own dtype: fp32 weights never pass through fp16 on the way
    vae_dt = vae_ops.run_dtype(parts["vae"], dt, upcast=parts["family"] in sdxl.FAMILIES)
    for key in ("unet", "vae", "text_encoder", "text_encoder_2"):
        if parts.get(key) is not None:
            to = vae_dt if key == "vae" else dt
            parts[key] = parts[key].to(dev, to).eval().requires_grad_(False)
    if dev.type == "cpu":
        # the VAE's convolutions run faster channels-last on the CPU (2 cores, demo VAE at
        # 128²-256²: encode 0.72-0.80x, decode 0.82-0.95x the time); the UNet's did not
        # (0.93-1.06x), so it keeps the default layout
        parts["vae"] = parts["vae"].to(memory_format=torch.channels_last)
    bundle = ModelBundle(name=name, device=dev, dtype=dt, **parts)
    log.info("Loaded %s: %s", name, bundle.family_name)
    return bundle


def _sd_family(parts: dict[str, Any]) -> str:
    """SD 1.x / 2.x from the UNet's text width (768: CLIP ViT-L, 1024: OpenCLIP ViT-H)."""
    width = parts["unet"].config.cross_attention_dim
    if width == 768:
        return "sd15"
    if width == 1024:
        v = parts["scheduler_config"].get("prediction_type") == "v_prediction"
        return "sd2-v" if v else "sd2"
    return "sd"


def _load_tiny(device, dtype):
    return _finish("builtin:tiny", tiny_components(), device, dtype)


def _load_tiny_inpaint(device, dtype):
    return _finish("builtin:tiny-inpaint", tiny_components(in_channels=9), device, dtype)


def _load_tiny_xl(device, dtype):
    return _finish("builtin:tiny-xl", sdxl.tiny_xl_components(), device, dtype)


def demo_model_available() -> bool:
    """Whether the trained demo model is installed (it is trained by the project itself)."""
    return (DEMO_MODEL_DIR / "model_index.json").exists()


def _shipped(name: str, where: Callable[[], Path], missing: str):
    """The loader of a model the project trains and ships in the folder ``where()`` names (read
    at load time, so tests can move it); ``missing`` says what it is and how to make it
    again. Every one reads the demo model's latents, so the demo's noise-aware classifier
    guides them all."""

    def load(device, dtype):
        folder = where()
        if not (folder / "model_index.json").exists():
            raise ModelLoadError(f"The {missing.format(folder=folder)}")
        bundle = _finish(name, load_diffusers_folder(folder), device, dtype)
        return _with_classifier(bundle, DEMO_MODEL_DIR)

    return load


def _with_classifier(bundle: ModelBundle, folder: Path) -> ModelBundle:
    """Load ``folder/classifier`` into the bundle (fp32: its gradients guide sampling)."""
    from .classifier import WEIGHTS_NAME, load_classifier

    if (folder / "classifier" / WEIGHTS_NAME).is_file():
        try:
            bundle.classifier = load_classifier(folder / "classifier", bundle.device)
        except Exception as e:  # a sentence for the user, not a traceback
            raise ModelLoadError(
                f"The classifier in {folder / 'classifier'} is unreadable: {e}"
            ) from e
    return bundle


BUILTINS: dict[str, Callable[[str | None, str | None], ModelBundle]] = {
    "builtin:tiny": _load_tiny,
    "builtin:tiny-xl": _load_tiny_xl,
    "builtin:demo": _shipped(
        "builtin:demo",
        lambda: DEMO_MODEL_DIR,
        "demo model is missing from {folder}. Reinstall the app, or train it with "
        "`python -m engine.training`.",
    ),
    "builtin:demo-lcm": _shipped(
        "builtin:demo-lcm",
        lambda: DEMO_LCM_DIR,
        "few-step demo model is missing from {folder}. Reinstall the app, or distil it with "
        "`python -m engine.training.distill`.",
    ),
    "builtin:tiny-inpaint": _load_tiny_inpaint,
    "builtin:demo-inpaint": _shipped(
        "builtin:demo-inpaint",
        lambda: DEMO_INPAINT_DIR,
        "demo inpainting model is missing from {folder}. Reinstall the app, or train it with "
        "`python -m engine.training.train_inpaint`.",
    ),
}
DEFAULT_MODEL = "builtin:demo"


def load_model(
    spec: str | os.PathLike = DEFAULT_MODEL,
    device=None,
    dtype=None,
    prediction_type: str | None = None,
    config_dir: str | os.PathLike | None = None,
) -> ModelBundle:
    """Load a model by spec (see module docstring). Raises ``ModelLoadError`` with a
    user-facing sentence on any failure. ``prediction_type`` ("epsilon"/"v_prediction")
    overrides what a checkpoint's configs say (SD 2.x files cannot tell from weights);
    ``config_dir`` gives a single file its configs."""
    spec = str(spec)
    if spec.startswith("builtin:"):
        if spec not in BUILTINS:
            raise ModelLoadError(
                f"Unknown built-in model {spec!r}; choose one of {sorted(BUILTINS)}."
            )
        return BUILTINS[spec](device, dtype)
    path = Path(spec).expanduser()
    _, run_dtype = pick_device(device, dtype)
    parts = load_path(path, config_dir, prediction_type, dtype=run_dtype)
    bundle = _finish(path.name, parts, device, dtype)
    return _with_classifier(bundle, path) if path.is_dir() else bundle
