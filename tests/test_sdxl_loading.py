"""SDXL loading, offline: diffusers folders (base and the refiner's single-encoder layout),
single files in the original SGM key layout, family detection, the shipped full-size configs.

The SGM writer (``sdxl_parity.to_sgm``) is the tests' own: it maps our diffusers weights to
the key layout of Stability's generative-models checkpoints (``model.diffusion_model.*`` with
the added embedding as ``label_emb.0.*``, ``first_stage_model.*``,
``conditioner.embedders.{i}.*``), so loading what it writes checks the loader's conversion
against an independent mapping.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from sdxl_parity import same_weights, to_sgm

from engine import loaders, sdxl
from engine.algorithms.common import run_to_end
from engine.algorithms.sdedit import sdedit
from engine.denoiser import Denoiser
from engine.errors import ModelLoadError
from engine.loaders import detect_family
from engine.models import load_model

PROMPT = "a red house beside two pine trees"


# ---- tiny models ----------------------------------------------------------------------------


def tiny_refiner(seed: int = 1) -> dict:
    """tiny-xl's refiner counterpart: the second encoder only (context = its 32 features),
    five micro-conditioning ids (size, crop, aesthetic score)."""
    from diffusers import UNet2DConditionModel

    parts = sdxl.tiny_xl_components(seed)
    torch.manual_seed(seed)
    parts["unet"] = UNet2DConditionModel(
        sample_size=8,
        block_out_channels=(32, 64),
        layers_per_block=1,
        norm_num_groups=8,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),
        cross_attention_dim=32,
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=32 + 5 * 8,
    ).eval()
    parts.update(text_encoder=None, tokenizer=None, family=sdxl.REFINER)
    return parts


def _pipeline(parts, refiner: bool):
    from diffusers import (
        DDIMScheduler,
        StableDiffusionXLImg2ImgPipeline,
        StableDiffusionXLPipeline,
    )

    components = {
        k: parts[k]
        for k in ("vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "unet")
    }
    components["scheduler"] = DDIMScheduler.from_config(parts["scheduler_config"])
    if refiner:
        pipe = StableDiffusionXLImg2ImgPipeline(
            **components, requires_aesthetics_score=True, force_zeros_for_empty_prompt=False
        )
    else:
        pipe = StableDiffusionXLPipeline(**components)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """tiny-xl and the tiny refiner, each saved by diffusers' pipeline as a folder and by the
    writer above as an SGM single file (configs beside it in ``<name>.config/``)."""
    root = tmp_path_factory.mktemp("sdxl")
    out = {}
    for name, parts, refiner in (
        ("base", sdxl.tiny_xl_components(0), False),
        ("refiner", tiny_refiner(), True),
    ):
        _pipeline(parts, refiner).save_pretrained(root / name)
        state = to_sgm(parts["unet"], parts["vae"], parts["text_encoder"], parts["text_encoder_2"])
        file = root / f"{name}.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, file)
        out[name] = {"parts": parts, "folder": root / name, "file": file}
    return out


@pytest.mark.parametrize("name", ["base", "refiner"])
@pytest.mark.parametrize("form", ["folder", "file"])
def test_folder_and_sgm_file_load_thesame_weights(saved, name, form):
    item = saved[name]
    config_dir = item["folder"] if form == "file" else None  # tiny configs, not the shipped
    parts = loaders.load_path(item[form], config_dir=config_dir)
    for key in ("unet", "vae", "text_encoder_2"):
        same_weights(item["parts"][key], parts[key])
    if name == "base":
        same_weights(item["parts"]["text_encoder"], parts["text_encoder"])
        assert parts["family"] == sdxl.BASE and parts["zero_empty_negative"]
        assert parts["tokenizer_2"].pad_token == "!" and parts["tokenizer"].pad_token != "!"
    else:
        assert parts["text_encoder"] is None and parts["tokenizer"] is parts["tokenizer_2"]
        assert parts["family"] == sdxl.REFINER and not parts["zero_empty_negative"]


def test_an_sdxl_instruct_folder_is_refused_in_a_sentence(saved, tmp_path):
    import shutil

    folder = shutil.copytree(saved["base"]["folder"], tmp_path / "instruct")
    config_file = folder / "unet" / "config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "in_channels": 8}))
    with pytest.raises(ModelLoadError, match="8 input channels .* instruction"):
        load_model(folder, device="cpu")


def test_the_sgm_file_is_recognised_from_its_weights(saved):
    from safetensors.torch import load_file

    assert detect_family(load_file(saved["base"]["file"])) == sdxl.BASE
    # the tiny refiner's added embedding is narrower than the real one: the encoders decide
    refiner = load_file(saved["refiner"]["file"])
    refiner.pop(sdxl.ADD_EMBED_KEY)
    assert detect_family(refiner) == sdxl.REFINER


def test_loading_says_which_family_it_loaded(saved, caplog):
    import logging

    with caplog.at_level(logging.INFO, logger="engine.models"):
        base = load_model(saved["base"]["folder"], device="cpu")
        refiner = saved["refiner"]
        refiner = load_model(refiner["file"], device="cpu", config_dir=refiner["folder"])
    assert (base.family, refiner.family) == (sdxl.BASE, sdxl.REFINER)
    assert "Loaded base: Stable Diffusion XL base" in caplog.text
    assert "Loaded refiner.safetensors: Stable Diffusion XL refiner" in caplog.text
    assert refiner.family_name == "Stable Diffusion XL refiner (1024 px, one text encoder)"


def test_model_info_names_the_family(saved):
    from engine import Engine, ModelLoaded

    eng = Engine()
    try:
        loaded = eng.wait(eng.load_model(str(saved["base"]["folder"]), "cpu"), 60)
        assert isinstance(loaded, ModelLoaded), loaded
        assert eng.model_info.family == "Stable Diffusion XL base (1024 px, two text encoders)"
        assert eng.model_info.native_size == 1024 // 16  # tiny-xl: 64 px
    finally:
        eng.shutdown()


def test_refiner_sdedit_matches_the_img2img_pipeline(saved):
    """The refiner's layout end to end: one encoder, aesthetic scores 6 / 2.5 in the ids, an
    empty negative prompt encoded (not zeroed); the same components in diffusers' pipeline."""
    bundle = load_model(saved["refiner"]["folder"], device="cpu")
    pipe = _pipeline(saved["refiner"]["parts"], refiner=True)
    image = np.random.default_rng(1).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    latents = bundle.encode(image)
    out = pipe(
        PROMPT,
        image=latents,  # latents in: the posterior mean, as ours
        strength=0.7,
        num_inference_steps=5,
        guidance_scale=5.0,
        generator=torch.Generator().manual_seed(2),
        output_type="latent",
    ).images
    d = Denoiser(bundle)
    cond = d.condition(PROMPT, "", 5.0)
    ours = run_to_end(sdedit(d, latents, cond, 5, 0.7, 5.0, torch.Generator().manual_seed(2)))
    torch.testing.assert_close(ours, out, rtol=1e-4, atol=1e-5)
    # the scores matter: with the prompt's score on both branches the result differs
    same = Denoiser(bundle)
    same.encode_negative = same.encode_text
    cond2 = same.condition(PROMPT, "", 5.0)
    other = run_to_end(sdedit(same, latents, cond2, 5, 0.7, 5.0, torch.Generator().manual_seed(2)))
    assert (other - out).abs().max() > 1e-3


def test_v_prediction_markers_of_sgm_files_are_read(saved, tmp_path):
    """SDXL v-prediction files mark themselves with "v_pred" (and "ztsnr" for a schedule
    rescaled to zero terminal SNR), as ComfyUI reads them; an explicit choice still wins."""
    from safetensors.torch import load_file

    state = load_file(saved["base"]["file"])
    state.update(v_pred=torch.tensor([]), ztsnr=torch.tensor([]))
    path = tmp_path / "vpred.safetensors"
    save_file(state, path)
    bundle = load_model(path, device="cpu", config_dir=saved["base"]["folder"])
    assert bundle.prediction_type == "v_prediction"
    assert bundle.scheduler_config["rescale_betas_zero_snr"]
    assert bundle.schedule.alpha(999) < 1e-6  # zero terminal SNR (diffusers keeps it finite)
    plain = load_model(saved["base"]["file"], device="cpu", config_dir=saved["base"]["folder"])
    assert plain.prediction_type == "epsilon" and plain.schedule.alpha(999) > 1e-3
    eps = load_model(
        path, device="cpu", config_dir=saved["base"]["folder"], prediction_type="epsilon"
    )
    assert eps.prediction_type == "epsilon"


# ---- the shipped full-size configs ----------------------------------------------------------

KNOWN_PARAMETERS = {  # parameter counts of the released models
    "sdxl": {
        "unet": 2567.46e6,
        "vae": 83.65e6,
        "text_encoder": 123.06e6,
        "text_encoder_2": 694.66e6,
    },
    # the refiner's UNet is published only as "2.3 B" (3 % tolerance below)
    "sdxl-refiner": {"unet": 2.3e9, "vae": 83.65e6, "text_encoder_2": 694.66e6},
}


def _meta_parts(family):
    folder = loaders.CONFIGS_DIR / family
    out = {}
    for part in KNOWN_PARAMETERS[family]:
        config = json.loads((folder / part / "config.json").read_text())
        out[part] = loaders._instantiate(part, config)  # on the meta device: no memory
    return out


@pytest.mark.parametrize("family", sorted(KNOWN_PARAMETERS))
def test_shipped_configs_build_the_real_architectures(family):
    parts = _meta_parts(family)
    for part, expected in KNOWN_PARAMETERS[family].items():
        count = sum(p.numel() for p in parts[part].parameters())
        tolerance = 0.03 if (family, part) == ("sdxl-refiner", "unet") else 0.01
        assert abs(count - expected) / expected < tolerance, (part, count)
    unet = parts["unet"].config
    assert unet.sample_size * 8 == 1024
    assert unet.cross_attention_dim == (2048 if family == "sdxl" else 1280)
    pooled = parts["text_encoder_2"].config.projection_dim
    assert sdxl.family_of(dict(unet), pooled) == family


@pytest.mark.parametrize("family", sorted(KNOWN_PARAMETERS))
def test_full_size_sgm_keys_are_detected_and_convert_back(family):
    """The full-size architecture (meta tensors, no memory) written in the SGM layout by the
    test's writer is recognised as its family, and the loader's conversion maps every key
    back onto the shipped configs' models with the right shape."""
    from diffusers.loaders.single_file_utils import (
        convert_ldm_unet_checkpoint,
        convert_ldm_vae_checkpoint,
    )

    parts = _meta_parts(family)
    state = to_sgm(parts["unet"], parts["vae"], parts.get("text_encoder"), parts["text_encoder_2"])
    assert detect_family(state, "anything.safetensors") == family
    unet = convert_ldm_unet_checkpoint(state, dict(parts["unet"].config))
    vae = convert_ldm_vae_checkpoint(state, dict(parts["vae"].config))
    for part, converted in (("unet", unet), ("vae", vae)):
        expected = parts[part].state_dict()
        assert converted.keys() == expected.keys()
        assert all(converted[k].shape == expected[k].shape for k in expected)


# ---- unsupported families -------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, family",
    [
        ("model.diffusion_model.joint_blocks.0.x_block.attn.qkv.weight", "Stable Diffusion 3"),
        ("double_blocks.0.img_attn.qkv.weight", "Flux"),
        ("model.diffusion_model.double_blocks.0.img_attn.qkv.weight", "Flux"),
    ],
)
def test_other_families_get_one_sentence_naming_what_is_supported(tmp_path, key, family):
    path = tmp_path / "model.safetensors"
    save_file({key: torch.zeros(2, 2)}, path)
    with pytest.raises(ModelLoadError) as err:
        load_model(path, device="cpu")
    text = str(err.value)
    assert family in text and "isn't supported" in text
    assert "SDXL (base and refiner)" in text and "Stable Diffusion 1.x and 2.x" in text
    assert text.count(". ") <= 1  # one sentence, then what is supported


def test_an_sd3_folder_is_not_taken_for_sdxl(tmp_path):
    """SD3's folders have a text_encoder_2 too, but a transformer instead of a UNet."""
    index = {
        "_class_name": "StableDiffusion3Pipeline",
        "transformer": ["diffusers", "SD3Transformer2DModel"],
        "text_encoder_2": ["transformers", "CLIPTextModelWithProjection"],
        "text_encoder_3": ["transformers", "T5EncoderModel"],
    }
    (tmp_path / "model_index.json").write_text(json.dumps(index))
    with pytest.raises(ModelLoadError, match="transformer-based .*SDXL \\(base and refiner\\)"):
        load_model(tmp_path, device="cpu")
