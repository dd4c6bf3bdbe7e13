"""The demo model's tokenizer and training pipeline (tiny sizes: plumbing, not quality)."""

import json

import numpy as np
import pytest
from transformers import CLIPTokenizer

from engine.training.tokenizer import build_world_tokenizer, learn_merges
from engine.world.captions import WORLD_VOCABULARY


@pytest.fixture(scope="module")
def world_tokenizer(tmp_path_factory):
    out = tmp_path_factory.mktemp("tok")
    build_world_tokenizer(out)
    return CLIPTokenizer.from_pretrained(str(out))


def test_every_world_word_is_one_token(world_tokenizer):
    t = world_tokenizer
    for word in WORLD_VOCABULARY:
        ids = t(word).input_ids
        assert len(ids) == 3, (word, t.tokenize(word))  # bos, word, eos


def test_captions_round_trip_and_unknown_words_fall_back_to_pieces(world_tokenizer):
    t = world_tokenizer
    text = "a red house , beside two pine trees under a sunset sky"
    assert t.decode(t(text).input_ids, skip_special_tokens=True) == text
    pieces = t.tokenize("a purple elephant")
    assert pieces[0] == "a</w>" and len(pieces) > 3  # unknown words split, never dropped
    assert t.decode(t("purple elephant").input_ids, skip_special_tokens=True) == "purple elephant"
    assert len(t) < 1000  # small: the embedding table must fit the demo model's budget


def test_bpe_learner_is_deterministic_and_minimal():
    merges = learn_merges(["low", "lower", "lowest"])
    assert merges == learn_merges(["lowest", "low", "lower"])
    assert merges[0] == "l o"  # the most frequent pair first
    assert all(len(m.split()) == 2 for m in merges)


@pytest.mark.slow
def test_pipeline_trains_exports_and_loads_through_the_loader(tmp_path):
    """Two steps of each stage, exported, then loaded as any diffusers folder."""
    from engine.models import load_model
    from engine.training.__main__ import main

    world, run, out = tmp_path / "world", tmp_path / "run", tmp_path / "demo"
    assert main(["data", "--out", str(world), "--n", "16"]) == 0
    assert (
        main(["vae", "--data", str(world), "--run", str(run), "--steps", "2", "--batch", "2"]) == 0
    )
    assert (
        main(["unet", "--data", str(world), "--run", str(run), "--steps", "2", "--batch", "2"]) == 0
    )
    assert (run / "vae.ckpt").exists() and (run / "unet.ckpt").exists()
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    import diffusers

    index = json.loads((out / "model_index.json").read_text())
    assert index["_diffusers_version"] == diffusers.__version__  # the shared writer's stamp
    assert index["scheduler"] == ["diffusers", "DDIMScheduler"]
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert size < 40 * 2**20
    b = load_model(str(out), device="cpu")
    assert b.native_size == 128 and b.vae_factor == 8 and b.prediction_type == "epsilon"
    img = b.decode(b.encode(np.zeros((128, 128, 3), np.uint8)))
    assert img.shape == (128, 128, 3)
    # resuming continues from the checkpoint instead of starting over
    assert (
        main(["unet", "--data", str(world), "--run", str(run), "--steps", "3", "--batch", "2"]) == 0
    )
    import torch

    assert torch.load(run / "unet.ckpt")["step"] == 3
    # --init continues a fresh run from an exported model: its weights and latent scale
    import shutil

    from safetensors.torch import load_file

    run2 = tmp_path / "run2"
    run2.mkdir()
    shutil.copy(run / "vae.ckpt", run2 / "vae.ckpt")
    shutil.copytree(run / "tokenizer", run2 / "tokenizer")
    args = ["--data", str(world), "--run", str(run2), "--steps", "1", "--batch", "2"]
    assert main(["unet", *args, "--init", str(out)]) == 0
    state = torch.load(run2 / "unet.ckpt")
    scale = json.loads((out / "vae" / "config.json").read_text())["scaling_factor"]
    assert state["vae_scale"] == pytest.approx(scale)
    exported = load_file(out / "unet" / "diffusion_pytorch_model.safetensors")
    # one warm-up step (lr · 1/200) moves the weights by less than their fp16 rounding; a
    # fresh initialisation would differ by the size of the weights themselves
    diffs = [(state["unet"][k] - v.float()).abs().max().item() for k, v in exported.items()]
    assert max(diffs) < 2e-3
