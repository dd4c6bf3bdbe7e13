"""Our demo model works when loaded with diffusers directly, without a dtype."""

from pathlib import Path

import numpy as np
import torch

DEMO = Path(__file__).resolve().parents[1] / "assets" / "models" / "demo"


def test_demo_folder_loads_in_diffusers_without_a_dtype():
    from diffusers import StableDiffusionPipeline

    pipe = StableDiffusionPipeline.from_pretrained(str(DEMO), safety_checker=None)
    assert pipe.text_encoder.dtype == pipe.unet.dtype == torch.float32
    pipe.set_progress_bar_config(disable=True)
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    out = pipe(
        "a red house",
        num_inference_steps=2,
        height=size,
        width=size,
        output_type="np",
        generator=torch.Generator().manual_seed(0),
    )
    assert out.images.shape == (1, size, size, 3) and np.isfinite(out.images).all()


def test_export_marks_the_fp16_text_encoder_as_float32(tmp_path):
    from transformers import CLIPTextConfig, CLIPTextModel

    from engine.training.export import load_as_float32

    config = CLIPTextConfig(
        vocab_size=50,
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        max_position_embeddings=8,
    )
    CLIPTextModel(config).half().save_pretrained(tmp_path, safe_serialization=True)
    assert CLIPTextModel.from_pretrained(tmp_path).dtype == torch.float16  # why export fixes it
    load_as_float32(tmp_path / "config.json")
    assert CLIPTextModel.from_pretrained(tmp_path).dtype == torch.float32
