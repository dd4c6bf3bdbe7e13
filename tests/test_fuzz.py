"""Fuzzing the engine's inputs with Hypothesis: image/mask/stroke files, option strings,
request values, PNG parameters and the CLI entry point (in-process, ``cli.main(argv)``).

The rule under test: every input is accepted or refused with a typed error whose message is
one sentence; never another exception, a traceback, a hang, or a write over an input. The
CLI never gets as far as a model here (the engine is replaced by a stub that stops the run),
so the whole file takes well under a minute. Run ``pytest tests/test_fuzz.py -s`` to see
the tally of what was tried.
"""

from __future__ import annotations

import io
import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from PIL import Image

from engine import cli, images, metadata
from engine.errors import FileError, InputError
from engine.jobs.base import OPTIONS, validate
from engine.types import METHODS, EditRequest

PNG = b"\x89PNG\r\n\x1a\n"
TALLY: Counter = Counter()


def fuzz(examples: int) -> settings:
    return settings(
        max_examples=examples,
        deadline=None,
        derandomize=True,  # the same cases in CI and here, and no example database
        database=None,
        suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    )


@pytest.fixture(scope="module", autouse=True)
def report():
    yield
    total = sum(v for k, v in TALLY.items() if k.endswith(" tried"))
    lines = [f"fuzz: {total} cases"] + [f"  {k}: {v}" for k, v in sorted(TALLY.items())]
    print("\n" + "\n".join(lines))


# ---- image, mask and stroke files -------------------------------------------------------

MODES = ["1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "I", "I;16", "F", "CMYK", "YCbCr"]
FORMATS = ["PNG", "TIFF", "BMP", "GIF", "JPEG", "WEBP", "PPM", "TGA", "ICO"]


@st.composite
def image_files(draw):
    """Bytes of a real image in an odd mode/format, often damaged afterwards."""
    mode, fmt = draw(st.sampled_from(MODES)), draw(st.sampled_from(FORMATS))
    w, h = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    seed = draw(st.integers(0, 2**16))
    rgb = np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)
    try:
        im = Image.fromarray(rgb).convert(mode)
        if mode == "I;16":
            im = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
        buf = io.BytesIO()
        im.save(buf, format=fmt)
    except (OSError, ValueError, KeyError):
        assume(False)  # Pillow cannot write this mode in this format
    data = buf.getvalue()
    damage = draw(st.sampled_from(["none", "truncate", "flip", "garbage-tail"]))
    if damage == "truncate":
        data = data[: draw(st.integers(0, max(0, len(data) - 1)))]
    elif damage == "flip":
        at = draw(st.integers(0, len(data) - 1))
        data = data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    elif damage == "garbage-tail":
        data += draw(st.binary(max_size=64))
    return damage, data


def _check_loaded(arr, channels):
    assert isinstance(arr, np.ndarray) and arr.dtype == np.uint8 and arr.flags.writeable
    assert arr.ndim == (2 if channels == 0 else 3) and (channels == 0 or arr.shape[2] == channels)


LOADERS = [(images.load_image, 3), (images.load_mask, 0), (images.load_strokes, 4)]


def _load_all(path):
    for load, channels in LOADERS:
        TALLY["files tried"] += 1
        try:
            _check_loaded(load(path), channels)
            TALLY["files read"] += 1
        except FileError as e:
            assert "\n" not in str(e) and str(path.name) in str(e)
            TALLY["files refused with a sentence"] += 1


@given(image_files())
@fuzz(300)
def test_any_image_file_loads_or_is_a_file_error(tmp_path, case):
    damage, data = case
    path = tmp_path / "fuzz.img"
    path.write_bytes(data)
    _load_all(path)
    try:
        _check_loaded(images.load_image_bytes(data), 3)
    except FileError:
        pass


@given(st.one_of(st.binary(max_size=200), st.binary(max_size=200).map(lambda b: PNG + b)))
@fuzz(200)
def test_random_bytes_are_refused_with_a_sentence(tmp_path, data):
    path = tmp_path / "random.png"
    path.write_bytes(data)
    _load_all(path)


# ---- option strings and request values --------------------------------------------------

NUMBERS = st.one_of(
    st.integers(-(2**80), 2**80),
    st.just(10**400),  # too large for a float
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
    st.text(max_size=8),
)
OPTION_NAMES = sorted({k for spec in OPTIONS.values() for k in spec}) + ["bogus", "", "Eta"]


@given(
    st.lists(
        st.one_of(
            st.text(max_size=30),
            st.builds(
                lambda k, v: f"{k}={v}",
                st.sampled_from(OPTION_NAMES),
                st.one_of(
                    st.text(max_size=12),
                    st.sampled_from(["nan", "Infinity", "-1", "1e400", "[1]", "{}", "null"]),
                ),
            ),
        ),
        max_size=4,
    ),
    st.sampled_from(METHODS),
)
@fuzz(500)
def test_option_strings_parse_and_validate_or_refuse(items, method):
    TALLY["option lists tried"] += 1
    try:
        options = cli.parse_options(items)
        validate(EditRequest(method, options=options))
        TALLY["option lists accepted"] += 1
    except InputError as e:
        assert "\n" not in str(e)
        TALLY["option lists refused with a sentence"] += 1


@given(
    st.sampled_from(METHODS),
    st.fixed_dictionaries(
        {
            "steps": st.one_of(st.integers(-2, 1002), NUMBERS),
            "guidance": st.one_of(st.floats(-1, 60), NUMBERS),
            "strength": st.one_of(st.floats(-0.5, 1.5), NUMBERS),
            "seed": st.one_of(st.integers(-(2**64), 2**65), NUMBERS),
            "width": st.one_of(st.none(), st.integers(0, 9000), NUMBERS),
            "height": st.one_of(st.none(), st.integers(0, 9000), NUMBERS),
            "prompt": st.one_of(st.text(max_size=20), st.integers()),
        }
    ),
)
@fuzz(500)
def test_request_values_validate_or_refuse(method, fields):
    TALLY["requests tried"] += 1
    try:
        validate(EditRequest(method, **fields))
    except InputError as e:
        assert "\n" not in str(e)
        TALLY["requests refused with a sentence"] += 1
        return
    TALLY["requests accepted"] += 1
    for name in ("steps", "guidance", "strength"):  # what passes is finite and in range
        assert math.isfinite(fields[name]) and not isinstance(fields[name], bool)
    assert 1 <= fields["steps"] <= 1000 and 0 <= fields["strength"] <= 1


# ---- PNG parameters ---------------------------------------------------------------------

PARAM_TEXT = st.one_of(
    st.text(max_size=200),
    st.lists(
        st.builds(
            lambda k, v: f"{k}: {v}",
            st.sampled_from(["Steps", "CFG scale", "Seed", "Size", "Negative prompt", "Model"]),
            st.one_of(
                st.text(max_size=12),
                st.sampled_from(["1000", "nan", "inf", "0", "25", "-3", "1e9", "7.5", '"']),
            ),
        ),
        max_size=6,
    ).map(lambda parts: "a prompt\n" + ", ".join(parts)),
)


@given(PARAM_TEXT)
@fuzz(500)
def test_png_parameter_text_always_parses_to_strings(text):
    TALLY["parameter texts tried"] += 1
    out = metadata.parse_parameters(text)
    assert all(isinstance(k, str) and isinstance(v, str) for k, v in out.items())
    # and the values a PNG carries into a request are validated, not trusted
    req_fields = {}
    for label, key, cast in (("Steps", "steps", int), ("CFG scale", "guidance", float)):
        try:
            req_fields[key] = cast(out[label])
        except (KeyError, ValueError, OverflowError):
            pass
    try:
        validate(EditRequest("generate", **req_fields))
    except InputError:
        TALLY["parameter values refused with a sentence"] += 1


@given(
    st.dictionaries(
        st.sampled_from(["prompt", "negative_prompt", "steps", "guidance", "seed", "label"]),
        st.one_of(st.text(max_size=30), st.integers(), st.floats(allow_nan=False)),
        max_size=6,
    )
)
@fuzz(300)
def test_png_parameters_round_trip_numbers_and_plain_text(params):
    TALLY["parameter round trips tried"] += 1
    out = metadata.parse_parameters(metadata.format_parameters(params))
    for key, label in (("steps", "Steps"), ("seed", "Seed"), ("guidance", "CFG scale")):
        if isinstance(params.get(key), int | float):
            assert out[label] == str(params[key])


# ---- the CLI entry point, in-process ------------------------------------------------------


class _ReachedTheEngine(Exception):
    """Everything before the model was accepted (the stub stops the run here)."""


@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli-fuzz")
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(d / "in.png")
    m = np.zeros((32, 32), np.uint8)
    m[:16] = 255
    Image.fromarray(m).save(d / "mask.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(d / "small.png")
    (d / "junk.png").write_bytes(PNG + b"\0" * 30)
    (d / "inv.pt").write_bytes(b"not an inversion")
    return d


VALUES = st.one_of(
    st.sampled_from(
        [
            "nan",
            "inf",
            "-inf",
            "-1",
            "0",
            "1",
            "1e400",
            "999999999999999999999",
            "abc",
            "",
            "0.5",
            "fp8",
            "cuda:7",
            "meta",
            "in.png",
            "mask.png",
            "small.png",
            "junk.png",
            "missing.png",
            "nowhere/out.png",
            "/sys/out.png",
            "eta=1",
            "bogus=1",
            "jump_length=1e400",
            "feather=1e9",
            "save=in.png",
            "inversion=inv.pt",
            "threshold=nan",
            "sampler=none",
            "1" + "0" * 400,
            "n_samples=1" + "0" * 400,
        ]
    ),
    st.text(max_size=10),
)
FLAGS = [
    "--steps", "--guidance", "--cfg", "--strength", "--seed", "--width", "--height", "--device",
    "--dtype", "-O", "--image", "--mask", "--strokes", "--output", "--prediction-type",
    "--model", "--prompt", "--bogus",
]  # fmt: skip


@given(
    st.one_of(st.sampled_from(METHODS), st.sampled_from(["bench", "nomethod", "", "--x"])),
    st.lists(st.tuples(st.sampled_from(FLAGS), VALUES), max_size=5),
    st.booleans(),
)
@fuzz(500)
def test_cli_bad_argv_is_one_line_and_exit_code_2(cli_dir, monkeypatch, capsys, m, pairs, img):
    import engine.bench
    import engine.engine

    def stop(*a, **k):
        raise _ReachedTheEngine

    monkeypatch.setattr(engine.engine.Engine, "__init__", stop)
    monkeypatch.setattr(engine.bench, "run", stop)
    monkeypatch.chdir(cli_dir)
    before = {p.name: p.read_bytes() for p in cli_dir.iterdir()}
    argv = [m] + (["-i", "in.png"] if img else [])
    for flag, value in pairs:
        argv += [flag, value]
    TALLY["CLI argv tried"] += 1
    try:
        code = cli.main(argv)
    except _ReachedTheEngine:
        TALLY["CLI argv accepted up to the model"] += 1
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err, (argv, err)
    assert code == 2, (argv, code, err)
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: "), (argv, err)
    TALLY["CLI argv refused in one line"] += 1
    after = {p.name: p.read_bytes() for p in cli_dir.iterdir() if p.name in before}
    assert after == before  # nothing was written over
