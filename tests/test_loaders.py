"""Model loading: diffusers folders and original-layout single files round-trip exactly; every
bad path or file gives a ModelLoadError a user can act on; family detection; shipped configs."""

from __future__ import annotations

import copy
import json
import pickle
import shutil
import zipfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from engine import loaders, model_writer
from engine.errors import ModelLoadError
from engine.loaders import CONTEXT_KEY, detect_family, load_diffusers_folder, load_path
from engine.model_writer import save_diffusers_folder, save_single_file, to_original_state_dict
from engine.models import load_model, tiny_components

PROMPT = "a red house under a blue sky"


# ---- fixtures -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny():
    return tiny_components(seed=0)


@pytest.fixture(scope="module")
def saved(tiny, tmp_path_factory):
    """The tiny model saved once as a diffusers folder, and as single files with and without
    the sidecar config folder."""
    root = tmp_path_factory.mktemp("saved")
    folder = save_diffusers_folder(tiny, root / "tiny-folder")
    with_sidecar = save_single_file(tiny, root / "tiny.safetensors")
    bare = save_single_file(tiny, root / "bare" / "tiny-bare.safetensors", sidecar=False)
    return {"folder": folder, "file": with_sidecar, "bare": bare}


@torch.no_grad()
def _outputs(unet, vae, text_encoder, tokenizer):
    """UNet output on a fixed input, VAE decode of fixed latents, and the prompt embedding."""
    ids = tokenizer(
        PROMPT, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt"
    ).input_ids
    embedding = text_encoder(ids)[0]
    gen = torch.Generator().manual_seed(1234)
    latents = torch.randn(1, 4, 8, 8, generator=gen)
    eps = unet(latents, torch.tensor([500]), encoder_hidden_states=embedding).sample
    image = vae.decode(latents).sample
    return embedding, eps, image


def _in_layout_of(vae, loaded_vae):
    """``vae`` in ``loaded_vae``'s memory layout: the loader makes the VAE channels-last on
    the CPU (engine.models), which changes the order of its float sums, not its weights."""
    weight = loaded_vae.decoder.conv_in.weight
    if weight.is_contiguous():
        return vae
    return copy.deepcopy(vae).to(memory_format=torch.channels_last)


def _assert_identical(reference: dict, loaded, exact: bool = True) -> None:
    get = loaded.__getitem__ if isinstance(loaded, dict) else lambda k: getattr(loaded, k)
    for key in ("unet", "vae", "text_encoder"):
        a, b = reference[key].state_dict(), get(key).state_dict()
        assert a.keys() == b.keys(), key
        assert all(torch.equal(a[k], b[k].cpu()) for k in a), key
    ref = _outputs(
        reference["unet"],
        _in_layout_of(reference["vae"], get("vae")),
        reference["text_encoder"],
        reference["tokenizer"],
    )
    new = _outputs(*(get(k) for k in ("unet", "vae", "text_encoder", "tokenizer")))
    for name, x, y in zip(("text embedding", "UNet output", "VAE decode"), ref, new):
        assert torch.equal(x, y) if exact else torch.allclose(x, y, atol=1e-5), name
    assert get("scheduler_config") == reference["scheduler_config"]
    assert get("vae_scale") == reference["vae_scale"]


# ---- round trips ----------------------------------------------------------------------------


def test_diffusers_folder_round_trip_is_identical(tiny, saved):
    bundle = load_model(str(saved["folder"]), device="cpu")
    assert bundle.dtype == torch.float32
    assert bundle.prediction_type == "epsilon"
    _assert_identical(tiny, bundle)


def test_single_file_round_trip_with_config_dir_is_identical(tiny, saved):
    # The folder serves only as configs here: its weights are not read.
    parts = load_path(saved["bare"], config_dir=saved["folder"])
    assert set(parts) == set(model_writer.PART_KEYS)
    _assert_identical(tiny, parts)


def test_single_file_with_sidecar_loads_through_load_model(tiny, saved):
    assert loaders.sidecar_dir(saved["file"]).joinpath("unet", "config.json").is_file()
    _assert_identical(tiny, load_model(str(saved["file"]), device="cpu"))


@pytest.mark.parametrize("kind", ["folder", "file"])
def test_a_half_precision_load_builds_in_half_precision(saved, kind, monkeypatch):
    """A bf16 (or a GPU's fp16) load copies the UNet and text encoder from the file straight
    into that dtype, never into a float32 copy of the whole model first; the weights are
    those of a float32 load cast afterwards, bit for bit. The VAE is built in float32."""
    built, build = {}, loaders._build

    def record(part, *args):
        model = build(part, *args)
        built[part] = model.dtype  # as built: loading casts the VAE later, in place
        return model

    monkeypatch.setattr(loaders, "_build", record)
    half = load_model(str(saved[kind]), device="cpu", dtype="bf16")
    assert built == {
        "unet": torch.bfloat16,
        "vae": torch.float32,
        "text_encoder": torch.bfloat16,
    }
    full = load_model(str(saved[kind]), device="cpu")
    for part in ("unet", "vae", "text_encoder"):
        a, b = getattr(half, part).state_dict(), getattr(full, part).state_dict()
        assert all(torch.equal(a[k], b[k].to(a[k].dtype)) for k in a), part


def test_single_file_uses_the_original_sd_key_layout(saved):
    keys = set(load_file(saved["file"]))
    prefixes = (loaders.UNET_PREFIX, loaders.VAE_PREFIX, loaders.CLIP_PREFIX)
    assert all(k.startswith(prefixes) for k in keys)
    for key in (
        "model.diffusion_model.time_embed.0.weight",
        "model.diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight",
        "model.diffusion_model.input_blocks.2.0.op.weight",
        "model.diffusion_model.middle_block.2.out_layers.3.weight",
        "model.diffusion_model.output_blocks.1.1.conv.weight",  # level 0 has no attention
        "model.diffusion_model.out.2.weight",
        "first_stage_model.encoder.mid.attn_1.q.weight",
        "first_stage_model.decoder.up.3.upsample.conv.weight",
        "first_stage_model.post_quant_conv.weight",
        "cond_stage_model.transformer.text_model.final_layer_norm.weight",
    ):
        assert key in keys, key
    assert load_file(saved["file"])["first_stage_model.encoder.mid.attn_1.q.weight"].ndim == 4


def test_our_diffusers_folder_loads_in_diffusers_and_transformers(tiny, saved):
    """The folder layout is the standard one, not just one our own loader accepts."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel, CLIPTokenizer

    folder = saved["folder"]
    parts = {
        "unet": UNet2DConditionModel.from_pretrained(folder / "unet", local_files_only=True),
        "vae": AutoencoderKL.from_pretrained(folder / "vae", local_files_only=True),
        "text_encoder": CLIPTextModel.from_pretrained(
            folder / "text_encoder", local_files_only=True
        ),
        "tokenizer": CLIPTokenizer.from_pretrained(folder / "tokenizer"),
        "scheduler_config": tiny["scheduler_config"],
        "vae_scale": tiny["vae_scale"],
    }
    # Weights are bit-identical; diffusers leaves them at unaligned offsets in the file's
    # buffer, which changes CPU kernels' rounding in the last bits (our loader copies them).
    _assert_identical(tiny, parts, exact=False)


def _tiny_sd2_style():
    """A tiny model shaped like SD 2.x: linear attention projections, an OpenCLIP-style (gelu)
    text encoder, per-level head dims, v-prediction."""
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    parts = tiny_components(seed=1)
    torch.manual_seed(1)
    parts["unet"] = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=48,
        attention_head_dim=[4, 8],
        use_linear_projection=True,
    ).eval()
    text_config = CLIPTextConfig(
        vocab_size=49408,
        hidden_size=48,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        hidden_act="gelu",
        max_position_embeddings=77,
    )
    parts["text_encoder"] = CLIPTextModel(text_config).eval()
    parts["scheduler_config"] = dict(parts["scheduler_config"], prediction_type="v_prediction")
    return parts


def test_sd2_style_single_file_uses_open_clip_layout_and_round_trips(tmp_path):
    parts = _tiny_sd2_style()
    path = save_single_file(parts, tmp_path / "tiny-v.safetensors")
    keys = set(load_file(path))
    assert "cond_stage_model.model.transformer.resblocks.1.attn.in_proj_weight" in keys
    assert "cond_stage_model.model.positional_embedding" in keys
    assert not any(k.startswith(loaders.CLIP_PREFIX) for k in keys)
    loaded = load_path(path)
    assert loaded["scheduler_config"]["prediction_type"] == "v_prediction"
    _assert_identical(parts, loaded)
    assert load_path(path, prediction_type="epsilon")["scheduler_config"]["prediction_type"] == (
        "epsilon"
    )


# ---- bad paths and files ---------------------------------------------------------------------


def _copy(folder: Path, dest: Path) -> Path:
    return Path(shutil.copytree(folder, dest))


def _raises(path, *fragments, **kwargs) -> str:
    with pytest.raises(ModelLoadError) as info:
        load_path(path, **kwargs)
    message = str(info.value)
    for fragment in fragments:
        assert fragment in message, message
    return message


def test_missing_path(tmp_path):
    _raises(tmp_path / "nowhere" / "model.safetensors", "does not exist", "nowhere")
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_model(str(tmp_path / "nowhere"))


def test_folder_without_model_index(tmp_path):
    (tmp_path / "photos").mkdir()
    _raises(tmp_path / "photos", "no model_index.json", "photos")


def test_folder_missing_a_component(saved, tmp_path):
    folder = _copy(saved["folder"], tmp_path / "model")
    shutil.rmtree(folder / "vae")
    _raises(folder, "missing its vae/ folder", "autoencoder")


def test_component_folder_without_weights(saved, tmp_path):
    folder = _copy(saved["folder"], tmp_path / "model")
    (folder / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    _raises(folder, "no weights file", "unet", "incomplete")


def test_truncated_safetensors(saved, tmp_path):
    data = saved["bare"].read_bytes()
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(data[: len(data) // 2])
    _raises(broken, "broken.safetensors", "truncated or corrupt")
    (tmp_path / "empty.safetensors").write_bytes(b"")
    _raises(tmp_path / "empty.safetensors", "truncated or corrupt")


def test_truncated_weights_inside_a_folder(saved, tmp_path):
    folder = _copy(saved["folder"], tmp_path / "model")
    weights = folder / "text_encoder" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    _raises(folder, "model.safetensors", "truncated or corrupt")


def test_unsupported_extension(tmp_path):
    image = tmp_path / "cat.png"
    image.write_bytes(b"\x89PNG\r\n")
    _raises(image, "cat.png", ".safetensors", "model folder")


def test_unrelated_safetensors(tmp_path):
    path = tmp_path / "classifier.safetensors"
    save_file({"fc.weight": torch.zeros(3, 3), "fc.bias": torch.zeros(3)}, path)
    _raises(path, "not a Stable Diffusion checkpoint", "Stable Diffusion 1.x and 2.x")


def test_lora_file_is_named_as_such(tmp_path):
    path = tmp_path / "style.safetensors"
    save_file(
        {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": torch.zeros(4, 4)}, path
    )
    _raises(path, "LoRA")


def test_tiny_single_file_without_configs_is_not_a_known_family(saved):
    _raises(saved["bare"], "32-wide text features", "Stable Diffusion 1.x and 2.x")


def test_sdxl_folder_without_its_second_encoder(saved, tmp_path):
    folder = _copy(saved["folder"], tmp_path / "sdxl")
    index = json.loads((folder / "model_index.json").read_text())
    index.update(_class_name="StableDiffusionXLPipeline", text_encoder_2=["transformers", "X"])
    (folder / "model_index.json").write_text(json.dumps(index))
    _raises(folder, "SDXL model folder", "missing its text_encoder_2/ folder")


def test_transformer_model_folder(tmp_path):
    folder = tmp_path / "flux"
    folder.mkdir()
    index = {"_class_name": "FluxPipeline", "transformer": ["diffusers", "FluxTransformer2DModel"]}
    (folder / "model_index.json").write_text(json.dumps(index))
    _raises(folder, "transformer-based", "FluxPipeline", "Stable Diffusion 1.x and 2.x")


def test_config_and_weights_shape_mismatch(saved, tmp_path):
    folder = _copy(saved["folder"], tmp_path / "model")
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config["cross_attention_dim"] = 64  # weights were trained for 32
    config_file.write_text(json.dumps(config))
    _raises(folder, "UNet weights", "wrong shape", "attn2.to_k.weight")


def test_single_file_with_configs_of_another_model(saved, tmp_path):
    _raises(saved["bare"], "don't match its config", config_dir=loaders.CONFIGS_DIR / "sd15")


def test_corrupt_model_index(saved, tmp_path):
    folder = _copy(saved["folder"], tmp_path / "model")
    (folder / "model_index.json").write_text("{not json")
    _raises(folder, "model_index.json", "not a readable JSON")


def test_ckpt_with_pickled_code_is_refused(tmp_path):
    path = tmp_path / "old.ckpt"
    torch.save({"state_dict": {"w": torch.zeros(1)}, "callbacks": zipfile.ZipInfo("x")}, path)
    _raises(path, "Python objects", ".safetensors")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_ckpt_that_is_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.ckpt"
    path.write_bytes(pickle.dumps({"w": [1.0] * 100})[:20])
    _raises(path, "notes.ckpt", "truncated or corrupt")


def test_plain_ckpt_loads(tiny, saved, tmp_path):
    path = tmp_path / "tiny.ckpt"
    torch.save({"state_dict": load_file(saved["bare"]), "global_step": 3}, path)
    _assert_identical(tiny, load_path(path, config_dir=saved["folder"]))


def test_folder_loader_rejects_a_file(saved):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load_diffusers_folder(saved["file"])


# ---- family detection -------------------------------------------------------------------------


def _synthetic(context_dim: int, in_channels: int = 4, **extra) -> dict:
    """Just the telltale tensors of an original-layout checkpoint, on the meta device."""
    meta = {"device": "meta"}
    return {
        "model.diffusion_model.input_blocks.0.0.weight": torch.empty(
            320, in_channels, 3, 3, **meta
        ),
        CONTEXT_KEY: torch.empty(320, context_dim, **meta),
        "first_stage_model.decoder.conv_out.weight": torch.empty(3, 128, 3, 3, **meta),
        **extra,
    }


def test_detects_sd1_from_context_width():
    assert detect_family(_synthetic(768), "v1-5-pruned-emaonly.safetensors") == "sd15"


def test_detects_sd2_and_its_prediction_type():
    sd2 = _synthetic(1024)
    assert detect_family(sd2, "v2-1_768-ema-pruned.safetensors") == "sd2-v"
    assert detect_family(sd2, "v2-1_512-base-ema.safetensors") == "sd2"
    assert detect_family(sd2, "anything.safetensors", prediction_type="epsilon") == "sd2"
    assert detect_family(sd2, "my-base.safetensors", prediction_type="v_prediction") == "sd2-v"


def test_detection_rejects_other_families():
    with pytest.raises(ModelLoadError, match="Stable Diffusion 3 .* isn't supported"):
        detect_family({"model.diffusion_model.joint_blocks.0.attn.qkv.weight": torch.empty(1)})
    with pytest.raises(ModelLoadError, match="4096-wide text features"):
        detect_family(_synthetic(4096))
    # an inpainting file (9 channels) is an SD 1.x one; depth (5) and instruct (8) are not run
    assert detect_family(_synthetic(768, in_channels=9), "inpainting.safetensors") == "sd15"
    with pytest.raises(ModelLoadError, match="8 input channels .* inpainting \\(9\\)"):
        detect_family(_synthetic(768, in_channels=8), "instruct-pix2pix.safetensors")


# ---- shipped configs ----------------------------------------------------------------------------


KNOWN_PARAMETERS = {  # published parameter counts of the real models
    "sd15": {"unet": 859.52e6, "vae": 83.65e6, "text_encoder": 123.06e6},
    "sd2": {"unet": 865.91e6, "vae": 83.65e6, "text_encoder": 340.39e6},
    "sd2-v": {"unet": 865.91e6, "vae": 83.65e6, "text_encoder": 340.39e6},
}


@pytest.mark.parametrize("family", sorted(KNOWN_PARAMETERS))
def test_shipped_configs_build_the_real_architectures(family):
    configs = loaders._read_configs(loaders.CONFIGS_DIR / family)
    for part, expected in KNOWN_PARAMETERS[family].items():
        model = loaders._instantiate(part, configs[part])  # on the meta device: no memory
        assert next(model.parameters()).is_meta
        count = sum(p.numel() for p in model.parameters())
        assert abs(count - expected) / expected < 0.01, (part, count)
    sd2 = family.startswith("sd2")
    assert configs["unet"]["cross_attention_dim"] == (1024 if sd2 else 768)
    assert configs["unet"]["use_linear_projection"] is sd2
    assert configs["vae"]["scaling_factor"] == 0.18215
    prediction = "v_prediction" if family == "sd2-v" else "epsilon"
    assert configs["scheduler"]["prediction_type"] == prediction
    assert configs["unet"]["sample_size"] * 8 == (768 if family == "sd2-v" else 512)
    tokenizer = loaders._load_tokenizer(loaders.CONFIGS_DIR / family / "tokenizer", False)
    assert tokenizer.pad_token == ("!" if sd2 else "<|endoftext|>")
    assert tokenizer.model_max_length == 77


def test_original_layout_of_the_real_sd15_architecture_round_trips():
    """Our reverse mapping on the full-size SD 1.5 architecture (meta tensors) gives the
    original checkpoint's key counts and names, and diffusers' converters map it back."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    configs = loaders._read_configs(loaders.CONFIGS_DIR / "sd15")
    parts = {k: loaders._instantiate(k, configs[k]) for k in ("unet", "vae", "text_encoder")}
    parts.update(tokenizer=None, scheduler_config={}, vae_scale=0.18215)
    original = to_original_state_dict(parts)
    count = {p: sum(k.startswith(p) for k in original) for p in ("model.", "first_", "cond_")}
    assert count == {"model.": 686, "first_": 248, "cond_": 196}  # as in v1-5-pruned
    for key in (
        "model.diffusion_model.input_blocks.3.0.op.weight",
        "model.diffusion_model.input_blocks.4.0.skip_connection.weight",
        "model.diffusion_model.output_blocks.2.1.conv.weight",
        "model.diffusion_model.output_blocks.5.2.conv.weight",
        "model.diffusion_model.middle_block.1.proj_in.weight",
        "first_stage_model.decoder.up.0.block.0.nin_shortcut.weight",
        "first_stage_model.encoder.down.2.block.0.nin_shortcut.weight",
    ):
        assert key in original, key
    assert detect_family(original, "v1-5.safetensors") == "sd15"
    back = {
        "unet": convert_ldm_unet_checkpoint(original, configs["unet"]),
        "vae": convert_ldm_vae_checkpoint(original, configs["vae"]),
        "text_encoder": loaders._convert_text_encoder(original, configs["text_encoder"]),
    }
    for part, state in back.items():
        expected = parts[part].state_dict()
        if part == "text_encoder":
            state = loaders._match_clip_prefix(state, expected)
        assert state.keys() == expected.keys(), part
        assert all(state[k].shape == expected[k].shape for k in expected), part
