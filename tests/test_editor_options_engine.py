"""Engine side of the editor's options (issue 18): the sampler choice, RePaint's inpainting
options (denoising strength, masked content, only masked), an interrupted job's last x̂₀,
and every stochastic method honouring its seed. builtin:tiny (random weights), CPU."""

import numpy as np
import pytest

from engine import Cancelled, EditRequest, Finished, Step, imageops, metadata
from engine.methods import METHODS


def picture(h=96, w=96, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (6, 6, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, h // 6 + 1, 0), w // 6 + 1, 1)[:h, :w].copy()


def run(engine, req) -> Finished:
    ev = engine.run(req, timeout=120)
    assert isinstance(ev, Finished), ev
    return ev


def test_sampler_ddpm_is_ddim_with_full_noise_and_is_recorded(engine):
    base = dict(prompt="a house", steps=4, seed=3, width=64, height=64)
    ddim = run(engine, EditRequest("generate", **base))
    ddpm = run(engine, EditRequest("generate", options={"sampler": "ddpm"}, **base))
    eta1 = run(engine, EditRequest("generate", options={"eta": 1.0}, **base))
    assert np.array_equal(ddpm.image, eta1.image)  # ddpm = DDIM's step with η = 1
    assert np.abs(ddpm.image.astype(int) - ddim.image).mean() > 1
    assert ddim.parameters.get("sampler", "ddim") == "ddim"
    assert ddpm.parameters["sampler"] == "ddpm"
    # the PNG text says so, and reads back through the declarations
    text = metadata.format_parameters(ddpm.parameters)
    assert "Sampler: ddpm" in text
    fields, problems = metadata.request_fields(metadata.parse_parameters(text))
    assert not problems and fields["options"]["sampler"] == "ddpm"
    edit = run(
        engine,
        EditRequest("sdedit", image=picture(), steps=4, strength=0.8, options={"sampler": "ddpm"}),
    )
    assert edit.parameters["sampler"] == "ddpm"


def masked(h=96, w=96):
    mask = np.zeros((h, w), np.uint8)
    mask[30:60, 20:50] = 255
    return mask


def test_repaint_denoising_strength_keeps_more_of_the_original(engine):
    img, mask = picture(), masked()
    inside = mask == 255
    outs = {}
    for strength in (0.01, 0.3, 1.0):
        options = {"denoise": strength, "masked_content": "original", "jump_n_sample": 1}
        req = EditRequest("repaint", image=img, mask=mask, steps=6, seed=1, options=options)
        ev = run(engine, req)
        assert np.array_equal(ev.image[~inside], img[~inside])  # outside: bit-exact
        assert ev.parameters["strength"] == strength  # "Denoising strength" in the PNG
        outs[strength] = ev.image[inside].astype(int)
    # random weights: "the original" is what the model's decoder makes of it, i.e. the
    # result of the least strength (one step)
    kept = {s: np.abs(outs[s] - outs[0.01]).mean() for s in (0.3, 1.0)}
    assert kept[0.3] < kept[1.0] * 0.7, kept


def test_masked_content_fill_starts_from_the_surroundings(engine, monkeypatch):
    img = np.full((96, 96, 3), (40, 160, 90), np.uint8)
    img[30:60, 20:50] = (250, 10, 10)  # a red object to remove
    mask = masked()
    filled = imageops.fill_hole(img, mask / 255.0)
    assert np.array_equal(filled[mask == 0], img[mask == 0])
    assert np.abs(filled[mask == 255].astype(int) - (40, 160, 90)).max() <= 2
    encoded = []
    bundle = engine.bundle
    encode = bundle.encode
    monkeypatch.setattr(bundle, "encode", lambda x: (encoded.append(x.copy()), encode(x))[1])
    outs = {}
    for content in ("original", "fill", "noise"):
        encoded.clear()
        options = {"denoise": 0.4, "masked_content": content, "jump_n_sample": 1}
        req = EditRequest("repaint", image=img, mask=mask, steps=6, seed=2, options=options)
        outs[content] = run(engine, req).image
        if content == "fill":  # the picture, then the start: the hole filled, no red left
            hw = encoded[0].shape[:2]  # the working size
            assert len(encoded) == 2 and np.array_equal(encoded[0], imageops.resize(img, hw))
            start = encoded[1]
            assert start[..., 0].max() < 120 and np.array_equal(start[:8], encoded[0][:8])
        else:
            assert len(encoded) == 1
    assert len({o.tobytes() for o in outs.values()}) == 3  # three different starts


def test_only_masked_works_on_a_crop_at_full_working_size(engine, monkeypatch):
    h, w = 192, 256
    img = picture(h, w, seed=4)
    mask = np.zeros((h, w), np.uint8)
    mask[150:170, 200:215] = 255
    encoded = []
    bundle = engine.bundle
    encode = bundle.encode
    monkeypatch.setattr(bundle, "encode", lambda x: (encoded.append(x.shape), encode(x))[1])
    options = {"only_masked": True, "padding": 10, "jump_n_sample": 1}
    ev = run(engine, EditRequest("repaint", image=img, mask=mask, steps=4, options=options))
    y0, x0, y1, x1 = imageops.crop_box(mask > 0, 10)
    assert (y0, x0, y1, x1) == (140, 190, 180, 225)
    assert ev.parameters["crop"] == "190,140,225,180"
    # the crop (35 x 40 px), not the picture, went through the model at its working size
    native = bundle.native_size
    assert encoded[0][:2] == imageops.working_size(y1 - y0, x1 - x0, native, bundle.vae_factor)
    assert ev.image.shape == img.shape
    outside = np.ones((h, w), bool)
    outside[y0:y1, x0:x1] = False
    assert np.array_equal(ev.image[outside], img[outside])  # outside the crop: bit-exact
    keep = (mask == 0) & ~outside
    assert np.array_equal(ev.image[keep], img[keep])  # inside it, outside the mask too
    assert np.abs(ev.image[mask == 255].astype(int) - img[mask == 255]).mean() > 5


def test_a_cancelled_job_sends_its_last_decoded_prediction_first(engine):
    events = []

    def listen(ev):
        events.append(ev)
        if isinstance(ev, Step) and ev.i == 3 and ev.label != "interrupted":
            engine.cancel(ev.job_id)

    final = engine.run(
        EditRequest("generate", prompt="x", steps=8, width=64, height=64), listen, 120
    )
    assert isinstance(final, Cancelled)
    last = [e for e in events if isinstance(e, Step)][-1]
    assert last.label == "interrupted" and (last.i, last.n) == (3, 8)
    assert last.preview.dtype == np.uint8 and last.preview.shape == (64, 64, 3)
    assert last.preview.std() > 0


STOCHASTIC = {
    "generate": dict(width=64, height=64),
    "sdedit": dict(image=picture(), strength=0.7),
    "repaint": dict(image=picture(), mask=masked(), options={"jump_n_sample": 1}),
    "diffedit_mask": dict(image=picture(), options={"n_samples": 2}),
}


@pytest.mark.parametrize("method", sorted(STOCHASTIC))
def test_every_stochastic_method_honours_the_seed(engine, method):
    assert METHODS[method].stochastic and "seed" in METHODS[method].common
    outs = []
    for seed in (1, 2, 1):
        ev = run(
            engine, EditRequest(method, prompt="a tree", steps=3, seed=seed, **STOCHASTIC[method])
        )
        outs.append(ev.extras.get("mask_map", ev.image))
    assert np.array_equal(outs[0], outs[2])  # the same seed: the same picture
    assert not np.array_equal(outs[0], outs[1])  # another seed: another picture


def test_deterministic_methods_are_declared_so():
    assert not METHODS["invert"].stochastic and not METHODS["reedit"].stochastic
    assert "seed" not in METHODS["invert"].common and "seed" not in METHODS["reedit"].common
