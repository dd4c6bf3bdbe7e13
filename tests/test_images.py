"""engine.images: one loader for the CLI and the editor, atomic writes, output checks."""

import os
import stat
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from engine import images
from engine.errors import FileError, InputError


def _png_claiming(tmp_path, w, h):
    """A valid tiny PNG whose header claims ``w``x``h`` pixels (a decompression bomb's
    first bytes)."""
    path = tmp_path / f"bomb-{w}x{h}.png"
    Image.new("L", (1, 1)).save(path)
    data = bytearray(path.read_bytes())
    ihdr = data.index(b"IHDR")
    data[ihdr + 4 : ihdr + 12] = struct.pack(">II", w, h)
    crc = zlib.crc32(bytes(data[ihdr : ihdr + 17])) & 0xFFFFFFFF
    data[ihdr + 17 : ihdr + 21] = struct.pack(">I", crc)
    path.write_bytes(bytes(data))
    return path


def test_loaded_arrays_are_writeable_for_every_loader(tmp_path):
    Image.new("RGBA", (8, 6), (10, 20, 30, 128)).save(tmp_path / "a.png")
    for arr in (
        images.load_image(tmp_path / "a.png"),
        images.load_image_bytes((tmp_path / "a.png").read_bytes()),
        images.load_mask(tmp_path / "a.png"),
        images.load_strokes(tmp_path / "a.png"),
    ):
        assert arr.flags.writeable and arr.dtype == np.uint8
        arr[0, 0] = 1  # editing the user's picture must work


def test_editor_files_use_the_same_writeable_loader(tmp_path):
    from editor import files

    Image.new("RGB", (8, 8), (1, 2, 3)).save(tmp_path / "p.png")
    arr = files.load_image(tmp_path / "p.png")
    arr[0, 0] = 0
    assert files.load_image is images.load_image and issubclass(files.FileError, InputError)


def test_sixteen_bit_png_is_scaled_not_clipped(tmp_path):
    ramp = (np.arange(64).reshape(8, 8) * 1000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    out = images.load_image(tmp_path / "g16.png")
    expect = np.round(ramp / 65535 * 255).astype(np.uint8)
    assert np.array_equal(out[..., 0], expect) and np.array_equal(out[..., 1], expect)


def test_transparency_goes_over_white(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (0, 0, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "a.png")
    out = images.load_image(tmp_path / "a.png")
    assert (out[0, 0] == (0, 0, 255)).all() and (out[1:] == 255).all()
    # a palette image with a transparent index, and RGB with a tRNS colour key
    pal = Image.new("P", (4, 4), 0)
    pal.putpalette([0, 0, 0, 200, 0, 0])
    pal.putpixel((0, 0), 1)
    pal.save(tmp_path / "p.png", transparency=0)
    out = images.load_image(tmp_path / "p.png")
    assert (out[0, 0] == (200, 0, 0)).all() and (out[3, 3] == 255).all()
    Image.new("RGB", (4, 4), (0, 0, 0)).save(tmp_path / "k.png", transparency=(0, 0, 0))
    assert (images.load_image(tmp_path / "k.png") == 255).all()


def test_exif_orientation_is_applied(tmp_path):
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :10] = 255
    im = Image.fromarray(arr)
    exif = im.getexif()
    exif[0x0112] = 6
    im.save(tmp_path / "r.jpg", exif=exif, quality=95)
    out = images.load_image(tmp_path / "r.jpg")
    assert out.shape == (40, 20, 3) and out[:10].mean() > 200


@pytest.mark.parametrize("size", [(9000, 9000), (20000, 20000)])
def test_decompression_bombs_are_a_clear_error(tmp_path, size):
    path = _png_claiming(tmp_path, *size)
    for load in (images.load_image, images.load_mask, images.load_strokes):
        with pytest.raises(FileError, match="8192x8192") as e:
            load(path)
        assert path.name in str(e.value)
    with pytest.raises(FileError, match="8192x8192"):
        images.load_image_bytes(path.read_bytes())


def test_damaged_missing_and_wrong_files_name_the_file(tmp_path):
    Image.new("RGB", (64, 64), (1, 2, 3)).save(tmp_path / "ok.png")
    data = (tmp_path / "ok.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    (tmp_path / "junk.png").write_bytes(b"not an image at all")
    (tmp_path / "empty.png").write_bytes(b"")
    (tmp_path / "folder.png").mkdir()
    cases = {
        "cut.png": "truncated or damaged",
        "junk.png": "not an image",
        "empty.png": "not an image",
        "missing.png": "does not exist",
        "folder.png": "folder",
    }
    for name, words in cases.items():
        for load in (images.load_image, images.load_mask, images.load_strokes):
            with pytest.raises(FileError, match=words) as e:
                load(tmp_path / name)
            assert name in str(e.value)


def test_mask_and_strokes_must_match_the_image_size(tmp_path):
    Image.new("L", (10, 8), 255).save(tmp_path / "m.png")
    assert images.load_mask(tmp_path / "m.png", (8, 10)).shape == (8, 10)
    with pytest.raises(FileError, match="mask .*10x8 but the image is 12x8"):
        images.load_mask(tmp_path / "m.png", (8, 12))
    with pytest.raises(FileError, match="stroke layer .*10x8 but the image is 12x8"):
        images.load_strokes(tmp_path / "m.png", (8, 12))


def test_strokes_keep_alpha_and_masks_read_transparent_as_keep(tmp_path):
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[0, 0] = (255, 0, 0, 100)
    rgba[1, 1] = (255, 255, 255, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "s.png")
    strokes = images.load_strokes(tmp_path / "s.png")
    assert (strokes[0, 0] == (255, 0, 0, 100)).all() and strokes[2, 2, 3] == 0
    mask = images.load_mask(tmp_path / "s.png")
    assert mask[1, 1] == 255 and mask[2, 2] == 0
    ramp = (np.arange(16).reshape(4, 4) * 4000).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "m16.png")
    assert images.load_mask(tmp_path / "m16.png")[3, 3] == round(60000 / 65535 * 255)


def test_atomic_write_follows_the_umask_and_keeps_an_existing_mode(tmp_path):
    old = os.umask(0o027)
    try:
        path = images.atomic_write(tmp_path / "new.bin", lambda f: f.write(b"abc"))
    finally:
        os.umask(old)
    assert path.read_bytes() == b"abc" and stat.S_IMODE(path.stat().st_mode) == 0o640
    path.chmod(0o604)
    images.atomic_write(path, lambda f: f.write(b"def"))
    assert stat.S_IMODE(path.stat().st_mode) == 0o604 and path.read_bytes() == b"def"

    def fail(f):
        f.write(b"half")
        raise RuntimeError("killed")

    with pytest.raises(RuntimeError):
        images.atomic_write(path, fail)
    assert path.read_bytes() == b"def" and sorted(p.name for p in tmp_path.iterdir()) == ["new.bin"]


def test_metadata_save_png_is_atomic_and_follows_the_umask(tmp_path):
    from engine.metadata import read_png_parameters, save_png

    old = os.umask(0o022)
    try:
        path = save_png(np.zeros((4, 4, 3), np.uint8), tmp_path / "o.png", {"prompt": "x"})
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert read_png_parameters(path)["prompt"] == "x"
    assert [p.name for p in tmp_path.iterdir()] == ["o.png"]


def test_check_output_refuses_inputs_and_unwritable_places(tmp_path):
    photo = tmp_path / "photo.png"
    photo.write_bytes(b"x")
    (tmp_path / "link.png").symlink_to(photo)
    os.link(photo, tmp_path / "hard.png")
    for out in (photo, tmp_path / "link.png", tmp_path / "hard.png", tmp_path / "." / "photo.png"):
        with pytest.raises(FileError, match="is an input file"):
            images.check_output(out, [photo])
    with pytest.raises(FileError, match="does not exist"):
        images.check_output(tmp_path / "nowhere" / "o.png")
    with pytest.raises(FileError, match="is a folder"):
        images.check_output(tmp_path)
    if os.path.isdir("/sys"):  # read-only even for root
        with pytest.raises(FileError, match="cannot be written"):
            images.check_output("/sys/o.png")
    assert images.check_output(tmp_path / "o.png", [photo, None]) == tmp_path / "o.png"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["hard.png", "link.png", "photo.png"]
