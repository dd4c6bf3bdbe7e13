"""Fuzz the project-file reader: malformed JSON, wrong shapes, bad values, damaged members.
Every case must end as a clean ``FileError`` (a sentence naming the file) or a valid load;
through the window, a failed open leaves the document, title and path as they were."""

import collections
import io
import json
import os
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from editor import document, project
from editor.files import FileError
from editor.methods import check_settings

SIZE = (12, 16)


def _png(arr):
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def _base():
    doc = document.Document(np.full((*SIZE, 3), 40, np.uint8))
    doc.add_result(np.full((*SIZE, 3), 90, np.uint8), {"method": "sdedit", "seed": 1})
    snap = project.snapshot(doc)
    members = {
        "image.png": _png(snap["image"]),
        "strokes.png": _png(snap["strokes"]),
        "mask.png": _png(snap["mask"]),
        "history/000.png": _png(snap["history"][0][0]),
    }
    meta = {
        "format": project.FORMAT,
        "settings": snap["settings"],
        "source_path": None,
        "history": [{"file": "history/000.png", "parameters": snap["history"][0][1]}],
    }
    return members, meta


MEMBERS, META = _base()

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=12,
)
top_keys = st.sampled_from(["format", "settings", "source_path", "history", "image_parameters"])
setting_keys = st.sampled_from([*document.DEFAULT_SETTINGS, "extra"])
option_paths = st.tuples(
    st.sampled_from(["sdedit", "repaint", "diffedit", "reedit", "generate", "nope"]),
    st.sampled_from(["mask_grow", "feather", "eta", "jump_length", "sampler", "depth", "x"]),
)
member_names = st.sampled_from(sorted(MEMBERS))


@st.composite
def projects(draw):
    """A project file's bytes: the valid one with a few things broken."""
    meta = json.loads(json.dumps(META))
    members = dict(MEMBERS)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["top", "setting", "option", "history", "member", "json"]))
        settings_ok = isinstance(meta, dict) and isinstance(meta.get("settings"), dict)
        if kind == "top" and isinstance(meta, dict):
            meta[draw(top_keys)] = draw(json_values)
        elif kind == "setting" and settings_ok:
            meta["settings"][draw(setting_keys)] = draw(json_values)
        elif kind == "option" and settings_ok:
            method, key = draw(option_paths)
            meta["settings"]["options"] = {method: {key: draw(json_values)}}
        elif kind == "history" and isinstance(meta, dict):
            meta["history"] = draw(
                st.lists(
                    st.fixed_dictionaries(
                        {},
                        optional={
                            "file": st.sampled_from([*MEMBERS, "missing.png"]) | json_values,
                            "parameters": json_values,
                        },
                    )
                    | json_values,
                    max_size=3,
                )
            )
        elif kind == "member":
            name = draw(member_names)
            members[name] = draw(
                st.sampled_from([b"", MEMBERS[name][: len(MEMBERS[name]) // 2]])
                | st.binary(max_size=64)
                | st.just(_png(np.zeros((3, 5), np.uint8)))
                | st.none()
            )
        else:
            meta = draw(json_values)
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members.items():
            if data is not None:
                z.writestr(name, data)
        text = json.dumps(meta)
        if draw(st.integers(0, 9)) == 0:
            text = text[: len(text) // 2]  # malformed JSON
        z.writestr("project.json", text)
    data = buf.getvalue()
    if draw(st.integers(0, 19)) == 0:
        data = data[: draw(st.integers(0, len(data)))]  # a truncated file
    return data


# FUZZ_PROJECT_EXAMPLES=1000 python -m pytest -s tests/editor/test_fuzz_project.py: the
# README's tally (opens through the window: refused with a sentence / loaded)
WINDOW_EXAMPLES = int(os.environ.get("FUZZ_PROJECT_EXAMPLES", 80))
TALLY: collections.Counter = collections.Counter()


@pytest.fixture(scope="module", autouse=True)
def _print_tally():
    yield
    if TALLY:
        print(
            f"\nproject fuzz through File > Open: {sum(TALLY.values())} cases, "
            f"{TALLY['refused']} refused with a sentence, {TALLY['loaded']} loaded and edited; "
            "tracebacks 0, half-opened documents 0"
        )


FUZZ = settings(
    max_examples=300,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@FUZZ
@given(data=projects())
def test_reader_gives_a_valid_project_or_a_clean_error(tmp_path, data):
    path = tmp_path / "fuzz.deproj"
    path.write_bytes(data)
    try:
        got = project.read_project(path)
    except FileError as e:
        assert "fuzz.deproj" in str(e) and "\n" not in str(e).strip()
        return
    assert got["image"].shape == (*SIZE, 3)
    assert check_settings(got["settings"]) == got["settings"]
    doc = document.Document()
    project.load_into(doc, got, str(path))
    assert doc.image.flags.writeable and doc.size == SIZE


@settings(FUZZ, max_examples=WINDOW_EXAMPLES)
@given(data=projects())
def test_window_open_is_all_or_nothing(window, tmp_path, data):
    path = tmp_path / "fuzz.deproj"
    path.write_bytes(data)
    window.doc.project_path = "/somewhere/previous.deproj"
    window.doc.mark_saved()
    before = window.doc.image.copy()
    title, settings_before = window.windowTitle(), json.dumps(window.doc.settings)
    if window.open_path(str(path)):
        assert window.doc.size == SIZE and window.doc.project_path == str(path)
        window.doc.mask[2:6, 2:6] = 255
        assert window.doc.grow_mask(2)  # editable, and the panel shows its settings
        window.prompt_panel.load_settings()
        TALLY["loaded"] += 1
        window.open_array(before, "restore")  # back to the previous picture for the next case
        window.doc.mark_saved()
        return
    assert "fuzz.deproj" in window.banner.text()
    TALLY["refused"] += 1
    assert np.array_equal(window.doc.image, before)
    assert window.doc.project_path == "/somewhere/previous.deproj"
    assert window.windowTitle() == title
    assert json.dumps(window.doc.settings) == settings_before
