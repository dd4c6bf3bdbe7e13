"""The demo model's architecture: Stable Diffusion in miniature, in diffusers classes.

Same component types and interfaces as SD 1.5 (AutoencoderKL with 8x downsampling and 4
latent channels, CLIPTextModel, UNet2DConditionModel with cross-attention, SD 1.5's
scheduler config), sized so that a 128 px image (16x16 latents) trains and samples on a CPU.
"""

from __future__ import annotations

from pathlib import Path

from ..models import SD15_SCHEDULER_CONFIG

IMAGE_SIZE = 128
TEXT_WIDTH = 128

VAE_CONFIG = dict(
    in_channels=3,
    out_channels=3,
    down_block_types=("DownEncoderBlock2D",) * 4,
    up_block_types=("UpDecoderBlock2D",) * 4,
    block_out_channels=(32, 64, 64, 64),
    layers_per_block=1,
    norm_num_groups=16,
    latent_channels=4,
    sample_size=IMAGE_SIZE,
)

UNET_CONFIG = dict(
    sample_size=IMAGE_SIZE // 8,
    in_channels=4,
    out_channels=4,
    block_out_channels=(64, 128, 128),
    layers_per_block=1,
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=TEXT_WIDTH,
    attention_head_dim=4,
    norm_num_groups=32,
)


def text_config(tokenizer):
    from transformers import CLIPTextConfig

    return CLIPTextConfig(
        vocab_size=len(tokenizer),
        hidden_size=TEXT_WIDTH,
        intermediate_size=4 * TEXT_WIDTH,
        num_hidden_layers=3,
        num_attention_heads=4,
        max_position_embeddings=tokenizer.model_max_length,
        projection_dim=TEXT_WIDTH,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )


def build_vae():
    from diffusers import AutoencoderKL

    return AutoencoderKL(**VAE_CONFIG)


def build_text_and_unet(tokenizer_dir: Path):
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    tokenizer = CLIPTokenizer.from_pretrained(str(tokenizer_dir))
    return tokenizer, CLIPTextModel(text_config(tokenizer)), UNet2DConditionModel(**UNET_CONFIG)


def scheduler_config() -> dict:
    return dict(SD15_SCHEDULER_CONFIG)
