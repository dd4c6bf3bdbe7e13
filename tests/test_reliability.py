"""Engine reliability: one final event per job in every case, listeners cannot hold the
engine, bounded CPU work cancels, bad values fail clearly, NaN is a failure, long prompts."""

import threading
import time

import numpy as np
import pytest
import torch

import engine.engine as engine_module
from engine import Cancelled, EditRequest, Engine, Failed, Finished, ModelLoaded, Step, imageops
from engine.algorithms.inversion import Inversion
from engine.errors import FileError
from engine.jobs import JOB_RUNNERS
from engine.jobs.edits import load_inversion

FINAL = (Finished, Failed, Cancelled, ModelLoaded)


def image(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 255, (h, w, 3), dtype=np.uint8)


class Recorder:
    def __init__(self):
        self.events, self.lock = [], threading.Lock()

    def __call__(self, ev):
        with self.lock:
            self.events.append(ev)

    def finals(self, job_id):
        with self.lock:
            return [e for e in self.events if e.job_id == job_id and isinstance(e, FINAL)]


def _settle(rec, ids, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if all(rec.finals(j) for j in ids):
            time.sleep(0.2)  # a second final event would arrive now
            return
        time.sleep(0.05)


# ---- exactly one final event --------------------------------------------------------------


def test_every_job_gets_exactly_one_final_event_including_shutdown():
    eng, rec = Engine(), Recorder()
    eng.add_listener(rec)
    gate, started = threading.Event(), threading.Event()

    def slow(ctx, req):  # holds the engine thread until the gate opens, then checks cancel
        started.set()
        while not gate.wait(0.01):
            ctx.check_cancel()
        yield from ()
        raise AssertionError("unreachable")

    ids = {}
    try:
        ids["load"] = eng.load_model("builtin:tiny", "cpu")
        ids["ok"] = eng.submit(EditRequest("generate", steps=2))
        ids["bad"] = eng.submit(EditRequest("generate", steps=0))
        ids["raises"] = eng.submit(EditRequest("sdedit", image=np.zeros((3, 3), np.uint8)))
        assert eng.wait(ids["raises"], 60) is not None
        JOB_RUNNERS["generate"], real = slow, JOB_RUNNERS["generate"]
        try:
            ids["running"] = eng.submit(EditRequest("generate"))
            assert started.wait(30)  # the rest stay queued behind it
            ids["queued"] = eng.submit(EditRequest("generate"))
            ids["cancelled"] = eng.submit(EditRequest("generate"))
            eng.cancel(ids["cancelled"])
            ids["superseded"] = eng.submit(EditRequest("sdedit", image=image()))
            ids["superseding"] = eng.submit(EditRequest("sdedit", image=image()), supersede=True)
            eng.shutdown(timeout=10)  # the running job is cancelled, the queued ones too
        finally:
            JOB_RUNNERS["generate"] = real
        ids["after"] = eng.submit(EditRequest("generate", steps=2))
        ids["load_after"] = eng.load_model("builtin:tiny", "cpu")
        _settle(rec, ids.values())
    finally:
        gate.set()
    kinds = {name: [type(e).__name__ for e in rec.finals(j)] for name, j in ids.items()}
    assert kinds == {
        "load": ["ModelLoaded"],
        "ok": ["Finished"],
        "bad": ["Failed"],
        "raises": ["Failed"],
        "running": ["Cancelled"],
        "queued": ["Cancelled"],
        "cancelled": ["Cancelled"],
        "superseded": ["Cancelled"],
        "superseding": ["Cancelled"],
        "after": ["Cancelled"],
        "load_after": ["Cancelled"],
    }
    for j in ids.values():  # and wait() returns it
        assert isinstance(eng.wait(j, 1), FINAL)


def test_a_listener_that_blocks_does_not_hold_the_engine(engine, monkeypatch):
    import engine.engine as engine_module

    monkeypatch.setattr(engine_module, "LISTENER_GRACE", 0.5)  # the wait per stall, shortened
    release = threading.Event()
    calls = []

    def stuck(ev):  # e.g. a listener waiting on the engine
        calls.append(ev)
        release.wait(60)

    engine.add_listener(stuck)
    try:
        results = [engine.run(EditRequest("generate", steps=3, seed=i), timeout=60) for i in (1, 2)]
        assert all(isinstance(r, Finished) for r in results)  # while the listener still waits
    finally:
        release.set()
        engine.remove_listener(stuck)
    assert calls  # it did get its events, on its own thread


def test_a_listener_that_waits_on_the_engine_does_not_deadlock(engine, monkeypatch):
    import engine.engine as engine_module

    monkeypatch.setattr(engine_module, "LISTENER_GRACE", 0.5)
    later = {}

    def waits(ev):
        if isinstance(ev, Step) and ev.i == 1 and "id" in later:
            engine.wait(later["id"], 30)  # would deadlock if called on the engine thread

    engine.add_listener(waits)
    try:
        first = engine.submit(EditRequest("generate", steps=3))
        later["id"] = engine.submit(EditRequest("generate", steps=2))
        assert isinstance(engine.wait(later["id"], 30), Finished)
        assert isinstance(engine.wait(first, 1), Finished)
    finally:
        engine.remove_listener(waits)


# ---- bounded CPU work ---------------------------------------------------------------------


def test_feather_is_capped_and_cancel_stops_it(engine, monkeypatch):
    big = image(1536, 1536)
    mask = np.full((1536, 1536), 255, np.uint8)
    r = engine.run(
        EditRequest("sdedit", image=big, mask=mask, steps=2, options={"feather": 5000}), timeout=60
    )
    assert isinstance(r, Failed) and "'feather'" in r.message and "256" in r.message

    erosions = []  # the feather's cancel checks: one per erosion, 256 if it ran to the end
    feather_box = imageops._feather_box

    def counted(box, steps, check_cancel):
        def check():
            erosions.append(1)
            if len(erosions) == 3:
                engine.cancel()  # the user cancels while the feather runs
            check_cancel()

        return feather_box(box, steps, check)

    monkeypatch.setattr(imageops, "_feather_box", counted)
    req = EditRequest(
        "sdedit", image=big, mask=mask, steps=2, strength=0.5, options={"feather": 256}
    )
    r = engine.run(req, timeout=120)
    assert isinstance(r, Cancelled), r
    assert len(erosions) == 3  # stopped at the next erosion (the whole feather takes ~20 s)
    monkeypatch.undo()
    assert isinstance(engine.run(EditRequest("generate", steps=2), timeout=60), Finished)


# ---- bad values ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fields, words",
    [
        ({"steps": 1000}, "Steps must be between 1 and 999"),
        ({"steps": 10**9}, "Steps"),
        ({"steps": 2.5}, "Steps must be a whole number"),
        ({"guidance": float("nan")}, "Guidance"),
        ({"guidance": float("inf")}, "Guidance"),
        ({"guidance": 1e6}, "Guidance must be between 0 and 50"),
        ({"strength": float("nan")}, "Strength"),
        ({"seed": 2**70}, "seed"),
        ({"options": {"eta": "abc"}}, "'eta' of generate must be a number"),
        ({"options": {"eta": float("nan")}}, "'eta'"),
        ({"options": {"bogus": 1}}, "Unknown option 'bogus' for generate; its options are: "),
        ({"width": 10**6}, "width"),
    ],
)
def test_bad_values_fail_with_a_sentence(engine, fields, words):
    r = engine.run(EditRequest("generate", **fields), timeout=60)
    assert isinstance(r, Failed) and r.kind == "InputError", r
    assert words in r.message and "Unexpected" not in r.message


def test_repaint_option_overflow_and_an_empty_mask_fail_clearly(engine):
    mask = np.zeros((64, 64), np.uint8)
    for method in ("sdedit", "repaint", "diffedit", "reedit"):
        opts = {}
        if method == "reedit":
            continue  # needs an inversion; covered below
        r = engine.run(EditRequest(method, image=image(), mask=mask, options=opts), timeout=60)
        assert isinstance(r, Failed) and "mask is empty" in r.message, (method, r)
    mask[10:20, 10:20] = 255
    bad = {"jump_length": float("inf")}
    r = engine.run(EditRequest("repaint", image=image(), mask=mask, options=bad), timeout=60)
    assert isinstance(r, Failed) and "'jump_length' of repaint must be" in r.message


# ---- NaN / inf ----------------------------------------------------------------------------


def test_nan_latents_fail_the_job_instead_of_a_black_image(engine, monkeypatch):
    monkeypatch.setattr(
        engine.denoiser, "model_output", lambda x, t, emb: torch.full_like(x, float("nan"))
    )
    for req in (
        EditRequest("generate", steps=2),
        EditRequest("sdedit", image=image(), steps=2, strength=0.5),
    ):
        r = engine.run(req, timeout=60)
        assert isinstance(r, Failed) and r.kind == "NonFiniteError", r
        assert "NaN/inf" in r.message and "fp32" in r.message


def test_nan_from_the_vae_fails_the_job(engine, monkeypatch):
    vae = engine.bundle.vae
    real = vae.decode

    def nan_decode(z, *a, **k):
        out = real(z, *a, **k)
        out.sample.fill_(float("inf"))
        return out

    monkeypatch.setattr(vae, "decode", nan_decode)
    r = engine.run(EditRequest("generate", steps=2), timeout=60)
    assert isinstance(r, Failed) and "VAE produced NaN/inf" in r.message


# ---- memory -------------------------------------------------------------------------------


def test_kept_results_are_bounded_by_bytes(engine, monkeypatch):
    monkeypatch.setattr(engine_module, "FINAL_BYTES", 3 * 128 * 128 * 3)
    ids = [engine.submit(EditRequest("generate", steps=1, width=128, height=128)) for _ in "abcde"]
    finals = [engine.wait(j, 60) for j in ids]
    assert all(isinstance(f, Finished) for f in finals)
    kept = [engine.wait(j, 1).image is not None for j in ids]
    assert kept[-1] and not kept[0] and sum(kept) <= 3
    assert engine._final_bytes <= 3 * 128 * 128 * 3


# ---- inversion files ----------------------------------------------------------------------


def _inversion(**changes):
    fields = {
        "trajectory": [torch.zeros(1, 4, 8, 8) for _ in range(3)],
        "timesteps": [500, 0],
        "null_embeddings": [torch.zeros(1, 77, 32) for _ in range(2)],
        "prompt": "a house",
        "guidance": 1.0,
        "method": "ddim",
        "model": "builtin:tiny",
    }
    fields.update(changes)
    return Inversion(**fields)


def test_damaged_or_foreign_inversion_files_are_clear_errors(engine, tmp_path):
    cases = {
        "junk.pt": lambda p: p.write_bytes(b"\x80\x04not a pickle at all"),
        "empty.pt": lambda p: p.write_bytes(b""),
        "foreign.pt": lambda p: torch.save({"weights": torch.zeros(3)}, p),
        "list.pt": lambda p: torch.save([1, 2, 3], p),
        "types.pt": lambda p: _inversion(trajectory=torch.zeros(3)).save(p),
        "short.pt": lambda p: _inversion(null_embeddings=[]).save(p),
        "order.pt": lambda p: _inversion(timesteps=[0, 500]).save(p),
        "nan.pt": lambda p: _inversion(
            trajectory=[torch.full((1, 4, 8, 8), float("nan"))] * 3
        ).save(p),
    }
    for name, write in cases.items():
        path = tmp_path / name
        write(path)
        with pytest.raises(FileError) as e:
            load_inversion(path)
        assert name in str(e.value)
        r = engine.run(EditRequest("reedit", options={"inversion": str(path)}), timeout=60)
        assert isinstance(r, Failed) and r.kind == "FileError" and name in r.message, r
    with pytest.raises(FileError, match="does not exist"):
        load_inversion(tmp_path / "missing.pt")
    good = tmp_path / "good.pt"
    _inversion().save(good)
    assert load_inversion(good).steps == 2


# ---- long prompts -------------------------------------------------------------------------


def _truncated(d, text):
    tok = d.bundle.tokenizer
    ids = tok(text, padding="max_length", max_length=77, truncation=True, return_tensors="pt")
    with torch.no_grad():
        return d.bundle.text_encoder(ids.input_ids)[0].to(d.dtype)


def test_short_prompts_encode_exactly_as_before(tiny_denoiser):
    d = tiny_denoiser
    d.chunks = 1
    for text in ("", "a red house", "a red house at night, " * 5):
        assert torch.equal(d.encode_text(text), _truncated(d, text))


def test_long_prompts_keep_their_tail(tiny_denoiser):
    d = tiny_denoiser
    head = "a red house at night, " * 20  # ~120 tokens: two windows
    a, b = d.encode_text(head + "with a dragon"), d.encode_text(head + "with a bicycle")
    assert a.shape == b.shape == (1, 154, a.shape[2])
    assert not torch.equal(a, b)  # the tail beyond 75 tokens changes the embedding
    assert torch.equal(a[:, :77], _truncated(d, head))  # the first window as before
    # the negative prompt is padded to the same number of windows
    cond = d.condition(head + "with a dragon", "blurry", guidance=7.5)
    assert cond.cond.shape == cond.uncond.shape
    d.chunks = 1


def test_long_prompts_run_through_every_method(engine):
    long = "a red house at night with a garden, " * 12
    mask = np.zeros((64, 64), np.uint8)
    mask[16:48, 16:48] = 255
    for req in (
        EditRequest("generate", prompt=long, steps=2),
        EditRequest("sdedit", prompt=long, negative_prompt="x", image=image(), steps=2),
        EditRequest("repaint", prompt=long, image=image(), mask=mask, steps=2),
        EditRequest(
            "diffedit",
            prompt=long,
            image=image(),
            steps=2,
            options={"n_samples": 1, "threshold": 0.0},
        ),
    ):
        r = engine.run(req, timeout=120)
        assert isinstance(r, Finished), (req.method, r)
    inv = engine.run(
        EditRequest("invert", prompt=long, image=image(), steps=2, options={"inversion": "ddim"}),
        timeout=120,
    )
    assert isinstance(inv, Finished), inv
    r = engine.run(
        EditRequest(
            "reedit", prompt=long + "snow", options={"inversion": inv.extras["inversion_id"]}
        ),
        timeout=120,
    )
    assert isinstance(r, Finished), r
    r = engine.run(EditRequest("generate", prompt="word " * 2000, steps=2), timeout=60)
    assert isinstance(r, Failed) and "Shorten it" in r.message
