"""Inversions stay in the engine behind an id: what an invert job hands out, what a re-edit
takes back, the store's byte bound, and the bytes a project keeps (export / import)."""

import io

import numpy as np
import pytest
import torch
from tensor_walk import tensors_in

from engine import EditRequest, Engine, Failed, Finished
from engine.algorithms.inversion import Inversion
from engine.errors import FileError

H, W = 40, 72


@pytest.fixture(scope="module")
def engine():
    eng = Engine("builtin:tiny", device="cpu")
    assert type(eng.wait(1, timeout=180)).__name__ == "ModelLoaded"
    yield eng
    eng.shutdown()


def _image(seed=0):
    return np.random.default_rng(seed).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _invert(engine, seed=0) -> Finished:
    req = EditRequest(
        "invert", prompt="a house", image=_image(seed), steps=2, options={"inversion": "ddim"}
    )
    ev = engine.run(req, timeout=120)
    assert isinstance(ev, Finished), ev
    return ev


def _reedit(engine, inversion_id, prompt="a red house"):
    req = EditRequest("reedit", prompt=prompt, options={"inversion": inversion_id})
    return engine.run(req, timeout=120)


def test_invert_hands_out_an_id_and_plain_values_and_reedit_takes_the_id(engine):
    ev = _invert(engine)
    assert not tensors_in(dict(ev.extras))
    assert set(ev.extras) == {"inversion_id", "inversion_summary"}
    inv_id = ev.extras["inversion_id"]
    assert isinstance(inv_id, int)
    summary = ev.extras["inversion_summary"]
    assert summary["inversion"] == "ddim" and summary["inversion_prompt"] == "a house"
    assert all(isinstance(v, str | int | float) for v in summary.values())
    out = _reedit(engine, inv_id)
    assert isinstance(out, Finished), out
    assert out.image.shape == (H, W, 3) and out.parameters["inversion_prompt"] == "a house"
    assert not tensors_in(dict(out.extras))


def test_the_store_is_bounded_by_bytes_and_a_dropped_id_says_invert_again(engine, monkeypatch):
    first = _invert(engine, 1).extras["inversion_id"]
    one = len(engine.export_inversion(first))  # about the bytes one inversion holds
    monkeypatch.setattr(engine.inversions, "max_bytes", int(2.5 * one))
    ids = [first] + [_invert(engine, seed).extras["inversion_id"] for seed in (2, 3, 4, 5)]
    failed = _reedit(engine, first)
    assert isinstance(failed, Failed)
    assert failed.message == "The inversion is no longer in memory; invert the image again."
    assert isinstance(_reedit(engine, ids[-1]), Finished)  # the newest are kept
    kept = [i for i in ids if i in engine.inversions._items]
    assert kept and len(kept) <= 3 and kept[-1] == ids[-1]
    with pytest.raises(Exception, match="no longer in memory"):
        engine.export_inversion(first)


def test_exported_bytes_import_as_a_new_id_that_reedits_the_same(engine):
    inv_id = _invert(engine, 7).extras["inversion_id"]
    before = _reedit(engine, inv_id)
    data = engine.export_inversion(inv_id)
    engine.inversions.clear()  # as after a restart
    assert isinstance(_reedit(engine, inv_id), Failed)
    new_id = engine.import_inversion(data)
    after = _reedit(engine, new_id)
    assert isinstance(after, Finished), after
    assert np.array_equal(after.image, before.image)


def _saved(obj) -> bytes:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return buf.getvalue()


def _non_finite(data: bytes) -> bytes:
    inv = Inversion.load(io.BytesIO(data))
    inv.trajectory = [torch.full_like(x, float("nan")) for x in inv.trajectory]
    buf = io.BytesIO()
    inv.save(buf)
    return buf.getvalue()


DAMAGE = {
    "truncated": lambda b: b[: len(b) // 2],
    "junk": lambda b: b"not an inversion",
    "empty": lambda b: b"",
    "foreign": lambda b: _saved({"weights": torch.zeros(3)}),
    "non-finite": _non_finite,
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_inversion_bytes_are_a_clean_error_naming_them(engine, damage):
    data = engine.export_inversion(_invert(engine, 8).extras["inversion_id"])
    count = len(engine.inversions._items)
    with pytest.raises(FileError, match="^The inversion in x.deproj is not a"):
        engine.import_inversion(DAMAGE[damage](data), "The inversion in x.deproj")
    assert len(engine.inversions._items) == count  # nothing kept
