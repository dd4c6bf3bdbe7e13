"""Write a trained run as a diffusers Stable Diffusion folder (fp16 safetensors)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch

from ..model_writer import write_model_index
from . import architecture as arch
from .train import load_vae


def load_as_float32(config: Path) -> None:
    """Make a transformers config say float32. ``save_pretrained`` records the fp16 storage
    dtype, and transformers then loads the text encoder in fp16 while diffusers loads the UNet
    in fp32, so ``StableDiffusionPipeline.from_pretrained(folder)`` without a dtype fails."""
    data = json.loads(config.read_text())
    for key in ("dtype", "torch_dtype"):
        if key in data:
            data[key] = "float32"
    config.write_text(json.dumps(data, indent=2) + "\n")


def export(run: Path, out: Path) -> Path:
    """EMA weights of UNet and text encoder, the VAE with its measured scaling factor,
    our tokenizer, SD 1.5's scheduler config; every file written to a temp folder first."""
    from diffusers import DDIMScheduler
    from transformers import CLIPTokenizer

    state = torch.load(run / "unet.ckpt", map_location="cpu")
    tokenizer, text, unet = arch.build_text_and_unet(run / "tokenizer")
    unet.load_state_dict(state["ema_unet"])
    text.load_state_dict(state["ema_text"])
    vae = load_vae(run)
    vae.register_to_config(scaling_factor=float(state["vae_scale"]))
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    for name, model in (("unet", unet), ("vae", vae), ("text_encoder", text)):
        model.half().save_pretrained(tmp / name, safe_serialization=True)
    load_as_float32(tmp / "text_encoder" / "config.json")
    CLIPTokenizer.from_pretrained(str(run / "tokenizer")).save_pretrained(tmp / "tokenizer")
    DDIMScheduler.from_config(arch.scheduler_config()).save_pretrained(tmp / "scheduler")
    write_model_index(tmp, unet, vae, text, "DDIMScheduler")
    card = out / "MODEL_CARD.md"
    if card.exists():
        shutil.copy(card, tmp / "MODEL_CARD.md")  # the card is written by hand from the logs
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"exported {run} step {state['step']} to {out} ({size / 2**20:.1f} MiB)")
    return out
