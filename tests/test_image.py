"""Odd and hostile inputs: every one gives a result or a clear ImageReadError."""

import io

import numpy as np
import pytest
from PIL import Image

import cast
from cast.errors import ImageReadError
from cast.image import read_image
from tests.helpers import bomb_png, encoded


def _png(img: Image.Image) -> bytes:
    return encoded(img, "PNG")


def test_cmyk_jpeg(photo, tmp_path):
    p = tmp_path / "cmyk.jpg"
    Image.fromarray(photo).convert("CMYK").save(p)
    out = read_image(p)
    assert out.rgb.shape == (512, 512, 3) and out.rgb.dtype == np.uint8
    assert np.abs(out.rgb.astype(int) - photo.astype(int)).mean() < 40
    assert out.notes == ("CMYK image converted to 8-bit RGB",) and out.name == "cmyk.jpg"


def test_16bit_png(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    p = tmp_path / "deep.png"
    Image.fromarray(ramp).save(p)
    out = read_image(p)
    assert out.size == (64, 32) and out.rgb.shape == (32, 64, 3)
    assert out.rgb[0, 0, 0] == 0 and out.rgb[-1, -1, 0] == 255
    assert out.notes == ("I;16 image converted to 8-bit RGB",)


def test_rgba_composited_on_white():
    rgba = np.zeros((10, 10, 4), np.uint8)
    rgba[..., 0] = 255
    rgba[:, 5:, 3] = 255  # left half transparent
    out = read_image(_png(Image.fromarray(rgba, "RGBA")))
    assert tuple(out.rgb[0, 0]) == (255, 255, 255) and tuple(out.rgb[0, 9]) == (255, 0, 0)
    assert out.notes == ("transparent areas composited on white",)


def test_palette_and_grayscale(photo):
    pal = Image.fromarray(photo).convert("P", palette=Image.Palette.ADAPTIVE)
    assert read_image(_png(pal)).rgb.shape == (512, 512, 3)
    gray = Image.fromarray(photo).convert("L")
    out = read_image(_png(gray))
    assert out.rgb.shape == (512, 512, 3) and (out.rgb[..., 0] == out.rgb[..., 2]).all()


def test_exif_rotation_swaps_size(photo, tmp_path):
    img = Image.fromarray(photo[:, :300])  # 300 wide, 512 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    p = tmp_path / "rotated.jpg"
    img.save(p, exif=exif.tobytes())
    out = read_image(p)
    assert out.size == (512, 300) and out.rgb.shape == (300, 512, 3)


def test_animated_gif_first_frame(tmp_path):
    frames = [Image.new("RGB", (20, 10), c) for c in ((255, 0, 0), (0, 0, 255))]
    p = tmp_path / "anim.gif"
    frames[0].save(p, save_all=True, append_images=frames[1:], duration=100)
    out = read_image(p)
    assert out.rgb.shape == (10, 20, 3) and out.rgb[5, 5, 0] > 200 and out.rgb[5, 5, 2] < 50
    assert out.notes == ("animated image (2 frames): the first frame is used",)


def test_too_small_is_refused_and_named(tmp_path):
    p = tmp_path / "speck.png"
    Image.new("RGB", (3, 5)).save(p)
    with pytest.raises(ImageReadError, match=r"speck.png: too small \(3x5 px\)"):
        read_image(p)
    assert read_image(_png(Image.new("RGB", (8, 8)))).rgb.shape == (8, 8, 3)
    named = io.BytesIO(p.read_bytes())
    named.name = "/some/where/upload.png"  # file objects report their base name
    with pytest.raises(ImageReadError, match="^upload.png: too small"):
        read_image(named)
    assert read_image(Image.new("RGB", (8, 8))).notes == ()


def test_truncated_jpeg_is_a_clear_error(photo, tmp_path):
    buf = io.BytesIO()
    Image.fromarray(photo).save(buf, "JPEG")
    p = tmp_path / "cut.jpg"
    p.write_bytes(buf.getvalue()[: len(buf.getvalue()) // 2])
    with pytest.raises(cast.ImageReadError, match="cut.jpg"):
        read_image(p)


def test_decompression_bomb_header_is_refused_without_decoding(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(bomb_png())
    with pytest.raises(cast.ImageReadError, match="bomb.png"):
        read_image(p)


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.jpg"
    p.write_text("just some text")
    with pytest.raises(cast.ImageReadError, match="not an image"):
        read_image(p)


def test_arrays_of_other_dtypes():
    assert read_image(np.full((4, 6), 65535, np.uint16)).rgb.max() == 255
    assert read_image(np.ones((4, 6, 3), np.float32)).rgb.min() == 255
    with pytest.raises(cast.ImageReadError):
        read_image(np.zeros((4, 6, 2), np.uint8))
