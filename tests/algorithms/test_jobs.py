"""The edit jobs on builtin:tiny: sizes, masks, errors, results; cancel through the Engine."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch
from job_driver import box_mask as box
from job_driver import gradient_image
from job_driver import run_job as run

from engine.algorithms.common import run_to_end
from engine.algorithms.inversion import Inversion, ddim_invert
from engine.algorithms.null_text import NullTextSettings, null_text_optimise
from engine.engine import Engine
from engine.errors import InputError
from engine.types import Cancelled, EditRequest, Finished, Step

H, W = 40, 72  # non-square, not a multiple of 8


def image(h=H, w=W, seed=0):
    return gradient_image(h, w, seed)


def box_mask(h=H, w=W):
    return box(h, w)


def outside_exact(out, src, mask):
    """Every pixel outside the mask is the input's, bit for bit (the feather lies inside)."""
    keep = mask == 0
    assert keep.any()
    return np.array_equal(out[keep], src[keep])


@pytest.mark.parametrize("sampler", ["ddim", "ddpm"])
def test_repaint_job(tiny, tiny_denoiser, sampler):
    src, mask = image(), box_mask()
    req = EditRequest(
        "repaint",
        prompt="a house",
        image=src,
        mask=mask,
        steps=6,
        options={"jump_length": 2, "jump_n_sample": 2, "sampler": sampler},
    )
    calls = tiny_denoiser.unet_calls
    res, steps = run(tiny, tiny_denoiser, req)
    assert res.image.shape == (H, W, 3)
    assert res.parameters["unet_calls"] == 6 + 2 * 1 * 2 == len(steps)
    assert tiny_denoiser.unet_calls - calls == len(steps)
    assert all(s.x0 is not None for s in steps)
    assert outside_exact(res.image, src, mask)
    assert not np.array_equal(res.image, src)


def test_inpaints_automatic_mask_blur_is_half_a_latent_cell_on_small_pictures(tiny, tiny_denoiser):
    """Mask blur 0 (automatic) is 4 px on a small picture (1 % of its side would be under 1
    px), and 1 % of the side on a large one; the same job with the value named agrees."""
    from engine.jobs.edits import repaint_feather

    assert repaint_feather(0.0, (H, W), 8) == 4.0
    assert repaint_feather(0.0, (512, 768), 8) == pytest.approx(7.68)
    assert repaint_feather(2.5, (H, W), 8) == 2.5
    src, mask = image(), box_mask()
    results = []
    for feather in (0.0, 4.0, 2.0):
        req = EditRequest(
            "repaint",
            prompt="a house",
            image=src,
            mask=mask,
            steps=4,
            options={"jump_n_sample": 1, "feather": feather},
        )
        results.append(run(tiny, tiny_denoiser, req)[0].image)
    assert np.array_equal(results[0], results[1])
    assert not np.array_equal(results[0], results[2])


def test_diffedit_mask_job(tiny, tiny_denoiser):
    src = image()
    req = EditRequest(
        "diffedit_mask",
        prompt="a red house",
        image=src,
        steps=10,
        options={"n_samples": 3, "batch_size": 2},
    )
    res, steps = run(tiny, tiny_denoiser, req)
    m = res.extras["mask"]
    assert m.shape == (H, W) and m.dtype == np.uint8
    assert len(steps) == 2 and all(s.image is not None and s.image.ndim == 3 for s in steps)
    assert res.image.shape == (H, W, 3)
    # identical prompts: nothing to edit
    same = EditRequest(
        "diffedit_mask",
        prompt="a red house",
        image=src,
        steps=10,
        options={"n_samples": 2, "reference_prompt": "a red house"},
    )
    res2, _ = run(tiny, tiny_denoiser, same)
    assert res2.extras["mask"].max() == 0


def test_diffedit_job_with_and_without_a_mask(tiny, tiny_denoiser):
    src, mask = image(), box_mask()
    req = EditRequest(
        "diffedit", prompt="a red house", image=src, mask=mask, steps=10, strength=0.5
    )
    res, steps = run(tiny, tiny_denoiser, req)
    assert res.image.shape == (H, W, 3)
    assert len(steps) == 2 * 5  # encode + decode, half the chain each
    assert outside_exact(res.image, src, mask)
    auto = EditRequest(
        "diffedit",
        prompt="a red house",
        image=src,
        steps=10,
        strength=0.5,
        options={"n_samples": 2, "threshold": 0.3},
    )
    res, steps = run(tiny, tiny_denoiser, auto)
    assert [s.label for s in steps][0] == "mask"
    assert res.extras["mask"].shape == (H, W)


@pytest.mark.parametrize("method", ["ddim", "negative_prompt", "null_text", "direct"])
def test_invert_then_reedit(tiny, tiny_denoiser, method, tmp_path):
    src, mask = image(), box_mask()
    inv_req = EditRequest(
        "invert",
        prompt="a house",
        image=src,
        steps=2,
        guidance=7.5,
        options={"inversion": method},
    )
    res, steps = run(tiny, tiny_denoiser, inv_req)
    inv = res.extras["inversion"]
    assert isinstance(inv, Inversion)
    assert inv.method == method and inv.image_size == (H, W) and inv.model == "builtin:tiny"
    assert len(inv.trajectory) == 3 and len(inv.null_embeddings) == 2
    assert res.image.shape == (H, W, 3)
    if method.startswith("null_text"):
        assert any(s.label.startswith("null-text") for s in steps)
    edit = EditRequest("reedit", prompt="a red house", mask=mask, options={"inversion": inv})
    out, steps = run(tiny, tiny_denoiser, edit)
    assert len(steps) == 2 and out.image.shape == (H, W, 3)
    assert outside_exact(out.image, src, mask)
    assert out.parameters["inversion"] == method
    # a shallower re-edit regenerates only the last part of the chain
    # (the random model's DiffEdit map is broad: whole_picture 1 keeps the blend local)
    local = {"inversion": inv, "depth": 0.5, "whole_picture": 1.0}
    shallow = EditRequest("reedit", prompt="a red house", options=local)
    out_s, steps_s = run(tiny, tiny_denoiser, shallow)
    # with no painted mask the blend region is DiffEdit's mask, found first
    assert steps_s[0].label == "mask" and "blend_mask" in out_s.extras
    assert [s.label for s in steps_s].count("re-edit") == 1
    assert out_s.parameters["strength"] == 0.5
    with pytest.raises(InputError, match="depth"):
        run(tiny, tiny_denoiser, EditRequest("reedit", options={"inversion": inv, "depth": 0}))
    if method == "null_text":  # saved to a file and re-edited from there: the same result
        path = tmp_path / "inv.pt"
        inv.save(path)
        again, _ = run(
            tiny,
            tiny_denoiser,
            EditRequest(
                "reedit", prompt="a red house", mask=mask, options={"inversion": str(path)}
            ),
        )
        assert np.array_equal(again.image, out.image)


def test_reedit_blends_inside_diffedits_region_by_default(tiny, tiny_denoiser, guided_mask_edge):
    from engine.imageops import dilate

    src = image()
    inv_req = EditRequest("invert", prompt="a house", image=src, steps=3, guidance=5.0)
    inv = run(tiny, tiny_denoiser, inv_req)[0].extras["inversion"]
    # the random model's DiffEdit map is broad: whole_picture 1 keeps the blend local
    local = {"inversion": inv, "whole_picture": 1.0}
    edit = EditRequest("reedit", prompt="a red house", options=local)
    out, steps = run(tiny, tiny_denoiser, edit)
    labels = [s.label for s in steps]
    # DiffEdit's mask comes first, then the re-edit shows it as its blend mask
    assert labels[0] == "mask" and labels.count("re-edit") == 3
    assert all(s.mask is not None for s in steps if s.label == "re-edit")
    blend = out.extras["blend_mask"]
    assert blend.shape == (H, W) and 0 < (blend > 0).mean() < 1
    # outside the region and its soft edge (a blur of σ = f/4 = 2 px reaches 6 px out) the
    # picture is the source's, bit for bit
    far = dilate(blend.astype(np.float32) / 255, 7) == 0
    assert far.any() and np.array_equal(out.image[far], src[far])
    # the same request gives the same picture (the mask's noise has a fixed seed)
    assert np.array_equal(run(tiny, tiny_denoiser, edit)[0].image, out.image)
    # a painted mask, intersected: the region stays inside it
    painted = box_mask()
    both = dict(edit.options, painted_mask="intersect")
    inter = run(
        tiny, tiny_denoiser, EditRequest("reedit", "a red house", mask=painted, options=both)
    )[0]
    assert not (inter.extras["blend_mask"] > 0)[painted == 0].any()
    # attention's blend: no mask phase, the words' maps decide
    words = dict(edit.options, blend_mask="attention")
    att, att_steps = run(tiny, tiny_denoiser, EditRequest("reedit", "a red house", options=words))
    assert "mask" not in [s.label for s in att_steps] and "blend_mask" in att.extras
    assert "blend_region" not in out.parameters


def test_a_reedit_whose_prompts_disagree_everywhere_changes_the_whole_picture(tiny, tiny_denoiser):
    """When DiffEdit's map is broad (``whole_picture``: 0 makes every map broad) the
    re-edit is one without local blend, said in its parameters; a painted mask still
    limits it."""
    src = image()
    inv_req = EditRequest("invert", prompt="a house", image=src, steps=3, guidance=5.0)
    inv = run(tiny, tiny_denoiser, inv_req)[0].extras["inversion"]
    broad = {"inversion": inv, "whole_picture": 0.0}
    out, steps = run(tiny, tiny_denoiser, EditRequest("reedit", "a red house", options=broad))
    assert steps[0].label == "mask" and "blend_mask" not in out.extras
    assert out.parameters["blend_region"] == "whole picture"
    assert "without local blend" in out.extras["notice"]
    unblended = {"inversion": inv, "local_blend": False}
    plain = run(tiny, tiny_denoiser, EditRequest("reedit", "a red house", options=unblended))[0]
    assert np.array_equal(out.image, plain.image) and "blend_region" not in plain.parameters
    painted = box_mask()
    limited = dict(broad, painted_mask="intersect")
    masked = run(
        tiny, tiny_denoiser, EditRequest("reedit", "a red house", mask=painted, options=limited)
    )[0]
    assert outside_exact(masked.image, src, painted) and "blend_mask" not in masked.extras


def test_null_text_loss_decreases_on_tiny(tiny, tiny_denoiser):
    d = tiny_denoiser
    g = torch.Generator().manual_seed(0)
    x0 = torch.randn(1, 4, 6, 10, generator=g)
    ts = d.schedule.timesteps(2)
    cond, uncond = d.encode_text("a house"), d.encode_text("")
    traj = run_to_end(ddim_invert(d, x0, cond, ts))
    settings = NullTextSettings(inner_steps=3, lr=1e-2, early_stop=0.0, early_stop_slope=0.0)
    grad_before = torch.is_grad_enabled()
    with torch.no_grad():
        _, losses, _ = run_to_end(null_text_optimise(d, traj, ts, cond, uncond, 7.5, settings))
    assert torch.is_grad_enabled() == grad_before
    for step in losses:
        assert len(step) == 4
        assert step[-1] < step[0]
    assert all(a >= b for a, b in zip(losses[0], losses[0][1:]))


def test_mismatched_mask_is_an_input_error(tiny, tiny_denoiser):
    src, bad = image(), np.zeros((H + 8, W), np.uint8)
    for method in ("repaint", "diffedit", "sdedit"):
        with pytest.raises(InputError, match="mask is 72x48 but the image is 72x40"):
            run(tiny, tiny_denoiser, EditRequest(method, prompt="x", image=src, mask=bad))
    # reedit checks the mask against the inverted image
    res, _ = run(
        tiny,
        tiny_denoiser,
        EditRequest("invert", prompt="x", image=src, steps=2, options={"inversion": "ddim"}),
    )
    inv = res.extras["inversion"]
    with pytest.raises(InputError, match="mask is 72x48 but the image is 72x40"):
        run(tiny, tiny_denoiser, EditRequest("reedit", mask=bad, options={"inversion": inv}))
    with pytest.raises(InputError, match="was inverted at 72x40"):
        run(
            tiny,
            tiny_denoiser,
            EditRequest("reedit", image=image(32, 32), options={"inversion": inv}),
        )
    with pytest.raises(InputError, match="needs an inversion"):
        run(tiny, tiny_denoiser, EditRequest("reedit", image=src))
    with pytest.raises(InputError, match="paint a mask"):
        run(tiny, tiny_denoiser, EditRequest("repaint", image=src))
    with pytest.raises(InputError, match="jump_length"):
        run(
            tiny,
            tiny_denoiser,
            EditRequest("repaint", image=src, mask=box_mask(), options={"jump_length": 0}),
        )


def test_cancel_mid_inversion_through_the_engine():
    engine = Engine("builtin:tiny", device="cpu")
    try:
        events, lock = [], threading.Lock()
        box = {}

        def listener(ev):
            with lock:
                events.append(ev)
            if isinstance(ev, Step) and ev.job_id == box.get("id") and "cancelled" not in box:
                box["cancelled"] = True
                engine.cancel(ev.job_id)

        req = EditRequest(
            "invert", prompt="a house", image=image(), steps=20, options={"inversion": "null_text"}
        )
        engine.add_listener(listener)
        with lock:
            box["id"] = job = engine.submit(req)
        final = engine.wait(job, timeout=60)
        assert isinstance(final, Cancelled)
        mine = [e for e in events if e.job_id == job]
        steps = [e for e in mine if isinstance(e, Step)]
        assert len(steps) == 1  # nothing after the step that asked to cancel
        assert isinstance(mine[-1], Cancelled)
        # the engine and grad mode survive: a following job finishes
        ok = engine.run(EditRequest("invert", prompt="a house", image=image(), steps=2), timeout=60)
        assert isinstance(ok, Finished)
    finally:
        engine.shutdown()
