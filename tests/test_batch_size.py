"""Batch size: several pictures from one pass of the model, each the picture its seed makes
alone; from the CLI, a file per picture with its own seed in the metadata."""

import numpy as np
from PIL import Image
from test_cli import cli_here

from engine.metadata import read_png_parameters
from engine.types import EditRequest, Finished


def run(engine, **kw) -> Finished:
    ev = engine.run(EditRequest(**kw))
    assert isinstance(ev, Finished), ev
    return ev


def test_a_batch_is_the_pictures_its_seeds_make_alone(engine):
    common = dict(method="generate", prompt="a red house", steps=4, width=64, height=64)
    batch = run(engine, seed=41, options={"batch_size": 3}, **common)
    more = batch.extras["batch"]
    assert [m["seed"] for m in more] == [42, 43]
    pictures = [batch.image] + [m["image"] for m in more]
    for seed, picture in zip((41, 42, 43), pictures, strict=True):
        alone = run(engine, seed=seed, **common).image
        # the same noise; a batched UNet call may round differently in the last bit
        assert np.abs(alone.astype(int) - picture.astype(int)).max() <= 2, seed
    assert not np.array_equal(pictures[0], pictures[1])
    single = run(engine, seed=41, **common)
    assert "batch" not in single.extras


def test_masked_sdedit_batch_keeps_every_unmasked_pixel(engine):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
    mask = np.zeros((64, 64), np.uint8)
    mask[:, :32] = 255
    ev = run(
        engine,
        method="sdedit",
        prompt="a boat",
        image=image,
        mask=mask,
        steps=4,
        strength=0.8,
        seed=7,
        options={"batch_size": 2},
    )
    second = ev.extras["batch"][0]["image"]
    for picture in (ev.image, second):
        assert np.array_equal(picture[:, 40:], image[:, 40:])
    assert not np.array_equal(ev.image[:, :24], second[:, :24])


def test_cli_writes_one_file_per_picture_with_its_seed(tmp_path, capsys, monkeypatch):
    src = tmp_path / "photo.png"
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(src)
    args = ["sdedit", "--model", "builtin:tiny", "-i", str(src), "-p", "a red house"]
    args += ["--steps", "3", "--seed", "9", "--batch-size", "3", "-o", str(tmp_path / "e.png")]
    code, err = cli_here(capsys, monkeypatch, tmp_path, *args)
    assert code == 0, err
    files = [tmp_path / n for n in ("e.png", "e-2.png", "e-3.png")]
    assert [read_png_parameters(f)["Seed"] for f in files] == ["9", "10", "11"]
    assert read_png_parameters(files[2])["Batch size"] == "3"
    pictures = [np.asarray(Image.open(f)) for f in files]
    assert not np.array_equal(pictures[0], pictures[2])
