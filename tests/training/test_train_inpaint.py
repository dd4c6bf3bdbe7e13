"""The inpainting fine-tune's pieces: the 9-channel UNet starts as the base model, the random
masks are the shapes people paint, and training builds the extra inputs as inference does."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.denoiser import inpaint_inputs
from engine.training.train_inpaint import MASK_SHAPES, conditioning, inpaint_unet, random_mask
from engine.world.raster import FIRST_OBJECT_LABEL


@torch.no_grad()
def test_the_grown_unet_starts_as_the_base_whatever_the_extra_inputs(tiny):
    grown = inpaint_unet(tiny.unet).eval()
    assert grown.config.in_channels == 9
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 8, 8, generator=gen)
    extra = torch.randn(2, 5, 8, 8, generator=gen)
    emb = torch.randn(2, 77, 32, generator=gen)
    t = torch.tensor([10, 700])
    base = tiny.unet(x, t, encoder_hidden_states=emb).sample
    ours = grown(torch.cat([x, extra], 1), t, encoder_hidden_states=emb).sample
    torch.testing.assert_close(ours, base, rtol=0, atol=1e-5)


def test_random_masks_cover_every_shape_and_stay_in_range():
    rng = np.random.default_rng(0)
    labels = np.zeros((128, 128), np.uint8)
    labels[60:90, 30:50] = FIRST_OBJECT_LABEL  # one object
    masks = [random_mask(rng, labels) for _ in range(200)]
    areas = np.array([m.mean() for m in masks])
    assert all(m.shape == (128, 128) and m.min() >= 0 and m.max() <= 1 for m in masks)
    assert (areas > 0).all()
    full = (areas == 1).mean()
    assert abs(full - MASK_SHAPES["full"]) < 0.08
    # object masks: the object grown by a few pixels, nothing far from it
    obj = labels >= FIRST_OBJECT_LABEL
    object_like = [m for m in masks if m[obj].min() == 1 and m.mean() < 0.1]
    assert len(object_like) > 0.25 * len(masks)
    assert all(m[:40].max() == 0 for m in object_like)


@pytest.mark.parametrize("seed", [0, 1])
@torch.no_grad()
def test_training_builds_the_extra_inputs_as_inference_does(tiny, seed):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = random_mask(rng, np.zeros((64, 64), np.uint8))
    ref = inpaint_inputs(tiny, image, mask)
    x = torch.from_numpy(image).permute(2, 0, 1)[None].float() / 127.5 - 1
    ours = conditioning(tiny.vae, tiny.vae_scale, x, torch.from_numpy(mask)[None, None])
    assert torch.equal(ours[:, :1], ref.mask)
    # training encodes in bf16 (train_inpaint.conditioning): equal up to its rounding
    scale = ref.masked_latents.abs().max().item()
    torch.testing.assert_close(ours[:, 1:], ref.masked_latents, rtol=0, atol=3e-2 * scale)


def test_a_second_stage_starts_from_the_given_inpainting_model(tmp_path):
    """``--init``: training resumes from an exported inpainting UNet (here one whose extra
    input channels are not zero), not from the base grown afresh; a folder without an
    inpainting UNet is refused in a sentence."""
    from engine.loaders import load_diffusers_folder
    from engine.model_writer import save_diffusers_folder
    from engine.models import tiny_components
    from engine.training.dataset import build_cache
    from engine.training.train_inpaint import export_inpaint, train_inpaint

    data, _ = build_cache(tmp_path / "world", 4, workers=1)
    base = save_diffusers_folder(tiny_components(), tmp_path / "base")
    with pytest.raises(SystemExit, match="not an inpainting model"):
        train_inpaint(data, tmp_path / "refused", steps=1, batch=2, base=base, init=base)
    parts = tiny_components(in_channels=9)
    with torch.no_grad():
        parts["unet"].conv_in.weight[:, 4:] = 0.5  # unlike a fresh start's zeros
    init = save_diffusers_folder(parts, tmp_path / "stage1")
    run = tmp_path / "stage2"
    train_inpaint(data, run, steps=2, batch=2, lr=1e-6, base=base, init=init)
    out = export_inpaint(run, tmp_path / "exported", base=base)
    w = load_diffusers_folder(out)["unet"].conv_in.weight.float()
    torch.testing.assert_close(w[:, 4:], torch.full_like(w[:, 4:], 0.5), rtol=0, atol=1e-2)


def test_object_swaps_change_one_object_inside_the_region_they_mask():
    """A swap re-renders one land object as another kind: the picture differs from its scene
    only inside the region (so the masked image shows nothing of the old object), the region
    holds a land object's whole footprint, and the caption names the change."""
    from engine.training.train_inpaint import object_swaps
    from engine.world.captions import NOUNS
    from engine.world.scene import LAND_KINDS, render_seed

    seeds = range(12)
    images, regions, captions, kinds = object_swaps(seeds, np.random.default_rng(0))
    assert 0 < len(images) == len(regions) == len(captions) == len(kinds) <= len(seeds)
    scenes = [render_seed(s) for s in seeds]
    for image, region, caption, kind in zip(images, regions, captions, kinds):
        # its scene: the one whose picture it equals outside the region
        (before,) = [b for b in scenes if np.array_equal(b.image[~region], image[~region])]
        assert (image != before.image).any() and caption != before.caption
        land = [o.name for o in before.scene.objects if o.kind in LAND_KINDS]
        assert any(before.masks[n].any() and (before.masks[n] <= region).all() for n in land)
        assert kind in LAND_KINDS and any(s[0] in caption for s in NOUNS[kind])  # named


def test_training_with_object_swaps_mixes_them_into_the_batches(tmp_path):
    """``swap_share``: the swaps are rendered, encoded and kept in the run (a resumed run
    reuses them), and training runs on batches that draw from them."""
    from engine.model_writer import save_diffusers_folder
    from engine.models import tiny_components
    from engine.training.dataset import build_cache
    from engine.training.train_inpaint import train_inpaint

    data, _ = build_cache(tmp_path / "world", 6, workers=1)
    base = save_diffusers_folder(tiny_components(), tmp_path / "base")
    run = tmp_path / "run"
    train_inpaint(data, run, steps=2, batch=4, lr=1e-6, base=base, swap_share=0.5, n_swaps=6)
    swaps = torch.load(run / "swaps.pt", weights_only=False)
    n = len(swaps["captions"])
    assert 0 < n <= 6 and swaps["latents"].shape[0] == n == len(swaps["images"])
    assert torch.load(run / "inpaint.ckpt", weights_only=False)["step"] == 2


def test_object_prompts_recaption_only_rows_that_mask_one_object():
    """``with_object_prompts``: a row masking one object may become that object alone ("a
    fir tree"); rows masking no object and rows dropped for guidance never change."""
    from engine.training.train_inpaint import object_phrase, with_object_prompts
    from engine.world.captions import NOUNS

    phrases = sorted({f"a {pair[0]}" for syns in NOUNS.values() for pair in syns})
    phrase_ids = {p: torch.full((5,), 100 + i) for i, p in enumerate(phrases)}
    empty = torch.zeros(5, dtype=torch.long)
    cap = torch.stack([torch.full((5,), 1), torch.full((5,), 2), empty, torch.full((5,), 3)])
    kinds = ["pine_tree", None, "house", "rock"]
    rng = np.random.default_rng(0)
    always = with_object_prompts(cap, kinds, 1.0, phrase_ids, empty, rng)
    assert torch.equal(always[1], cap[1]) and torch.equal(always[2], empty)
    by_id = {int(v[0]): p for p, v in phrase_ids.items()}
    assert by_id[int(always[0, 0])] in ("a pine tree", "a fir tree")
    assert by_id[int(always[3, 0])] in ("a rock", "a boulder")
    assert torch.equal(with_object_prompts(cap, kinds, 0.0, phrase_ids, empty, rng), cap)
    both = {object_phrase("house", rng) for _ in range(50)}
    assert both == {"a house", "a cottage"}


def test_training_with_object_prompts_runs_on_object_masks_and_swaps(tmp_path):
    from engine.model_writer import save_diffusers_folder
    from engine.models import tiny_components
    from engine.training.dataset import build_cache
    from engine.training.train_inpaint import train_inpaint

    data, _ = build_cache(tmp_path / "world", 6, workers=1)
    base = save_diffusers_folder(tiny_components(), tmp_path / "base")
    run = tmp_path / "run"
    train_inpaint(
        data,
        run,
        steps=2,
        batch=4,
        lr=1e-6,
        base=base,
        swap_share=0.5,
        n_swaps=6,
        object_prompts=1.0,
    )
    swaps = torch.load(run / "swaps.pt", weights_only=False)
    assert len(swaps["kinds"]) == len(swaps["captions"])
    assert torch.load(run / "inpaint.ckpt", weights_only=False)["step"] == 2
