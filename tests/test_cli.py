"""``python -m engine`` end to end, in a subprocess like a user would run it."""

import os
import subprocess
import sys

import numpy as np
from PIL import Image

from engine.metadata import format_parameters, parse_parameters, read_png_parameters


def run_cli(*args, cwd):
    env = {**os.environ, "PYTHONPATH": os.getcwd()}
    return subprocess.run(
        [sys.executable, "-m", "engine", *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_generate_then_sdedit_write_pngs_with_parseable_metadata(tmp_path):
    out = tmp_path / "gen.png"
    r = run_cli(
        "generate",
        "--model",
        "builtin:tiny",
        "-p",
        "a red house, at night",
        "--steps",
        "4",
        "--seed",
        "5",
        "-o",
        str(out),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    assert "4/4" in r.stderr  # the progress bar reached the end
    meta = read_png_parameters(out)
    assert meta["prompt"] == "a red house, at night"
    assert meta["Steps"] == "4" and meta["Seed"] == "5" and meta["Model"] == "builtin:tiny"
    assert meta["Size"] == "64x64" and meta["Sampler"] == "DDIM"

    mask = np.zeros((64, 64), np.uint8)
    mask[:32] = 255
    Image.fromarray(mask).save(tmp_path / "mask.png")
    out2 = tmp_path / "edit.png"
    r = run_cli(
        "sdedit",
        "--model",
        "builtin:tiny",
        "-i",
        str(out),
        "--mask",
        str(tmp_path / "mask.png"),
        "-p",
        "a boat",
        "-n",
        "blurry",
        "--strength",
        "0.5",
        "--steps",
        "6",
        "-O",
        "eta=0.0",
        "-o",
        str(out2),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    meta = read_png_parameters(out2)
    assert meta["Negative prompt"] == "blurry" and meta["Denoising strength"] == "0.5"
    a, b = np.asarray(Image.open(out)), np.asarray(Image.open(out2))
    assert np.array_equal(a[48:], b[48:]) and not np.array_equal(a[:24], b[:24])


def test_same_seed_same_png(tmp_path):
    outs = []
    for name in ("a.png", "b.png"):
        r = run_cli(
            "generate",
            "--model",
            "builtin:tiny",
            "--steps",
            "3",
            "--seed",
            "9",
            "-o",
            name,
            cwd=tmp_path,
        )
        assert r.returncode == 0, r.stderr
        outs.append(np.asarray(Image.open(tmp_path / name)))
    assert np.array_equal(*outs)


def test_user_errors_are_one_line_not_tracebacks(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\0" * 20)
    r = run_cli("sdedit", "--model", "builtin:tiny", "-i", "broken.png", cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr
    assert "broken.png is not an image" in r.stderr
    r = run_cli("generate", "--model", str(tmp_path / "missing"), cwd=tmp_path)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "missing" in r.stderr
    r = run_cli("bench", "--model", "random:sd3", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr and "sd2-v" in r.stderr


def test_output_never_overwrites_the_input(tmp_path):
    picture = np.full((64, 64, 3), 90, np.uint8)
    Image.fromarray(picture).save(tmp_path / "photo.png")
    r = run_cli(
        "sdedit", "--model", "builtin:tiny", "-i", "photo.png", "-o", "photo.png", cwd=tmp_path
    )
    assert r.returncode == 2 and "is an input file" in r.stderr
    assert np.array_equal(np.asarray(Image.open(tmp_path / "photo.png")), picture)
    # without -o the result is named after the method
    r = run_cli(
        "sdedit", "--model", "builtin:tiny", "-i", "photo.png", "--steps", "2", cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "sdedit.png").exists()


def test_metadata_round_trips_awkward_values():
    params = {
        "prompt": "a house,\nat night",
        "negative_prompt": "ugly",
        "steps": 30,
        "guidance": 4.5,
        "seed": 123,
        "size": "96x64",
        "model": "C:\\models\\sd15",
        "strength": 0.35,
        "method": "sdedit",
        "jump_length": 10,
        "label": 'say "hi"',
    }
    meta = parse_parameters(format_parameters(params))
    assert meta["prompt"] == "a house,\nat night" and meta["Negative prompt"] == "ugly"
    assert meta["Steps"] == "30" and meta["CFG scale"] == "4.5" and meta["Seed"] == "123"
    assert meta["Model"] == "C:\\models\\sd15" and meta["Denoising strength"] == "0.35"
    assert meta["Jump length"] == "10" and meta["Label"] == "say 'hi'"
