"""The engine thread: event order, job ids, cancel, supersede, failures; SDEdit behaviour."""

import threading

import numpy as np
import pytest
import torch

from engine import (
    Cancelled,
    EditRequest,
    Engine,
    Failed,
    Finished,
    ModelLoaded,
    Started,
    Step,
)
from engine.jobs import JOB_RUNNERS


def image(h=64, w=64, seed=0):
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 255, (4, 4, 3), dtype=np.uint8)
    return np.repeat(np.repeat(coarse, h // 4 + 1, 0), w // 4 + 1, 1)[:h, :w].copy()


class Recorder:
    def __init__(self):
        self.events = []
        self.lock = threading.Lock()

    def __call__(self, ev):
        with self.lock:
            self.events.append(ev)

    def of(self, job_id):
        with self.lock:
            return [e for e in self.events if e.job_id == job_id]


def test_events_arrive_in_order_tagged_with_the_job_id(engine):
    rec = Recorder()
    engine.add_listener(rec)
    try:
        a = engine.submit(EditRequest("generate", prompt="a house", steps=4))
        b = engine.submit(EditRequest("sdedit", prompt="x", image=image(), steps=10, strength=0.5))
        assert engine.wait(b, 60) is not None
    finally:
        engine.remove_listener(rec)
    for job_id, n in ((a, 4), (b, 5)):
        evs = rec.of(job_id)
        kinds = [type(e) for e in evs]
        assert kinds == [Started] + [Step] * n + [Finished]
        steps = [e for e in evs if isinstance(e, Step)]
        assert [s.i for s in steps] == list(range(1, n + 1))
        assert all(s.n == n and s.preview.dtype == np.uint8 for s in steps)
        assert steps[0].timestep > steps[-1].timestep
    # a's events all come before b's: one worker, in order
    ids = [e.job_id for e in rec.events if e.job_id in (a, b)]
    assert ids == sorted(ids)


def test_preview_is_rgb_at_working_size(engine):
    rec = Recorder()
    r = engine.run(
        EditRequest("sdedit", prompt="x", image=image(96, 48), steps=4, strength=1.0), rec
    )
    assert isinstance(r, Finished) and r.image.shape == (96, 48, 3)
    step = next(e for e in rec.events if isinstance(e, Step))
    # the working size: about 64² px (the tiny model's native size) in multiples of 8
    assert step.preview.shape == (88, 48, 3)
    assert step.preview.shape[0] > step.preview.shape[1]  # keeps the aspect


def test_cancel_stops_within_one_step(engine):
    rec = Recorder()

    def cancel_on_first_step(ev):
        rec(ev)
        if isinstance(ev, Step) and ev.i == 1:
            engine.cancel(ev.job_id)

    engine.add_listener(cancel_on_first_step)
    try:
        job = engine.submit(EditRequest("generate", prompt="x", steps=50))
        final = engine.wait(job, 60)
    finally:
        engine.remove_listener(cancel_on_first_step)
    assert isinstance(final, Cancelled)
    steps = [e for e in rec.of(job) if isinstance(e, Step)]
    # one step, then its x̂₀ decoded and sent as "interrupted" (the editor keeps it)
    assert [e.label for e in steps][1:] == ["interrupted"] and steps[0].i == 1
    # the engine is still usable
    assert isinstance(engine.run(EditRequest("generate", steps=2), timeout=60), Finished)


def test_a_cancel_that_keeps_nothing_sends_no_interrupted_image(engine):
    rec = Recorder()

    def discard_on_first_step(ev):
        rec(ev)
        if isinstance(ev, Step) and ev.i == 1:
            engine.cancel(ev.job_id, keep_interrupted=False)

    engine.add_listener(discard_on_first_step)
    try:
        job = engine.submit(EditRequest("generate", prompt="x", steps=50))
        final = engine.wait(job, 60)
    finally:
        engine.remove_listener(discard_on_first_step)
    assert isinstance(final, Cancelled)
    assert [e.i for e in rec.of(job) if isinstance(e, Step)] == [1]  # no "interrupted" step


def test_supersede_drops_queued_jobs_and_cancel_removes_a_queued_one(engine):
    gate, running = threading.Event(), threading.Event()
    rec = Recorder()

    def hold(ev):  # keep the first job busy until the others are queued
        rec(ev)
        if isinstance(ev, Step) and ev.i == 1 and not running.is_set():
            running.set()
            gate.wait(10)

    engine.add_listener(hold)
    try:
        first = engine.submit(EditRequest("generate", steps=3))
        assert running.wait(30)
        queued = [engine.submit(EditRequest("generate", steps=3, seed=i)) for i in range(2)]
        dropped = engine.submit(EditRequest("generate", steps=3))
        engine.cancel(dropped)
        newest = engine.submit(EditRequest("generate", steps=3), supersede=True)
        gate.set()
        assert isinstance(engine.wait(newest, 60), Finished)
    finally:
        gate.set()
        engine.remove_listener(hold)
    assert isinstance(engine.wait(first, 1), Finished)
    for j in queued + [dropped]:
        assert [type(e) for e in rec.of(j)] == [Cancelled]


def test_user_errors_become_failed_events_and_the_engine_survives(engine):
    bad_mask = np.zeros((10, 10), np.uint8)
    r = engine.run(EditRequest("sdedit", prompt="x", image=image(), mask=bad_mask), timeout=60)
    assert isinstance(r, Failed) and "mask" in r.message and "same size" in r.message
    r = engine.run(EditRequest("sdedit", prompt="x"), timeout=60)
    assert isinstance(r, Failed) and "image" in r.message
    r = engine.run(EditRequest("generate", steps=0), timeout=60)
    assert isinstance(r, Failed) and "Steps" in r.message
    assert isinstance(engine.run(EditRequest("generate", steps=2), timeout=60), Finished)


def test_out_of_memory_fails_the_job_only(engine, monkeypatch):
    def oom(ctx, req):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")
        yield

    monkeypatch.setitem(JOB_RUNNERS, "generate", oom)
    r = engine.run(EditRequest("generate"), timeout=60)
    assert isinstance(r, Failed) and r.kind == "OutOfMemoryError"
    assert "ran out of memory" in r.message
    monkeypatch.undo()
    assert isinstance(engine.run(EditRequest("generate", steps=2), timeout=60), Finished)


def test_failed_model_load_keeps_the_old_model(engine, tmp_path):
    r = engine.wait(engine.load_model(str(tmp_path / "nope")), 60)
    assert isinstance(r, Failed) and "nope" in r.message
    r = engine.wait(engine.load_model("builtin:nonexistent"), 60)
    assert isinstance(r, Failed) and "builtin:tiny" in r.message
    assert engine.model_info.name == "builtin:tiny"
    assert isinstance(engine.run(EditRequest("generate", steps=2), timeout=60), Finished)


def test_model_loads_on_the_engine_thread_and_listeners_on_their_own(monkeypatch):
    import engine.engine as engine_module

    loaded_on, seen = [], []
    real_load = engine_module.load_model

    def load(*args, **kwargs):
        loaded_on.append(threading.current_thread().name)
        return real_load(*args, **kwargs)

    monkeypatch.setattr(engine_module, "load_model", load)
    eng = Engine(listener=lambda ev: seen.append((ev, threading.current_thread().name)))
    try:
        r = eng.wait(eng.load_model("builtin:tiny", "cpu"), 60)
        assert isinstance(r, ModelLoaded) and r.info.device == "cpu"
        assert r.info.dtype == "float32" and r.info.native_size == 64
    finally:
        eng.shutdown()
    assert loaded_on == ["engine"]
    # a listener that blocks cannot hold the engine thread, so it runs on its own
    assert {name for _, name in seen} == {"engine-listener"}


def test_same_seed_same_image_other_seed_differs(engine):
    req = EditRequest("generate", prompt="a house", steps=5, seed=7)
    a = engine.run(req, timeout=60).image
    b = engine.run(req, timeout=60).image
    c = engine.run(EditRequest("generate", prompt="a house", steps=5, seed=8), timeout=60).image
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_sdedit_strength_zero_is_the_vae_round_trip(engine, tiny):
    img = image()
    r = engine.run(EditRequest("sdedit", prompt="x", image=img, strength=0.0), timeout=60)
    assert np.array_equal(r.image, tiny.decode(tiny.encode(img)))


def test_sdedit_mask_keeps_unmasked_pixels_exact_at_any_size(engine):
    img = image(90, 130, seed=3)
    mask = np.zeros((90, 130), np.uint8)
    mask[10:40, 20:70] = 255
    r = engine.run(
        EditRequest("sdedit", prompt="x", image=img, mask=mask, strength=0.8, steps=10), timeout=60
    )
    assert r.image.shape == img.shape
    keep = mask == 0  # the feather lies inside the mask
    assert np.array_equal(r.image[keep], img[keep])
    assert np.abs(r.image[15:35, 25:65].astype(int) - img[15:35, 25:65]).mean() > 2


def test_strokes_are_composited_before_editing(engine, tiny):
    img = image()
    strokes = np.zeros((64, 64, 4), np.uint8)
    strokes[16:48, 16:48] = (255, 0, 0, 255)
    r = engine.run(EditRequest("sdedit", image=img, strokes=strokes, strength=0.0), timeout=60)
    painted = img.copy()
    painted[16:48, 16:48] = (255, 0, 0)
    assert np.array_equal(r.image, tiny.decode(tiny.encode(painted)))


def test_requests_are_frozen_copies():
    img = image()
    req = EditRequest("sdedit", image=img, options={"eta": 0.5})
    img[:] = 0
    assert req.image.any() and not req.image.flags.writeable
    with pytest.raises(TypeError):
        req.options["eta"] = 1.0
    with pytest.raises(ValueError):
        EditRequest("unknown-method")


def test_full_preview_on_request_uses_the_vae(engine, tiny):
    rec = Recorder()

    def ask_on_first_step(ev):
        rec(ev)
        if isinstance(ev, Step) and ev.i == 1:
            engine.request_full_preview()

    r = engine.run(EditRequest("generate", prompt="x", steps=4), ask_on_first_step, 60)
    assert isinstance(r, Finished)
    steps = [e for e in rec.events if isinstance(e, Step)]
    decoded = [s for s in steps if "decoded" in s.label]
    assert [s.i for s in decoded] == [2]  # exactly the step after the request
    assert decoded[0].preview.shape == (64, 64, 3)


def test_a_load_leaves_the_model_out_of_later_full_collections(engine):
    import gc

    # the engine fixture's model is loaded: its objects sit in the permanent generation, so
    # a later full collection (which holds the GIL, freezing the GUI) does not walk them
    assert gc.get_freeze_count() > 10_000
