"""cvkit.images.load_image: every mode becomes L or RGB, transparency on white, 16 bits scaled."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from cvkit.errors import DataError
from cvkit.images import load_image


def test_rgb_and_l_pass_through(tmp_path):
    rgb, grey = tmp_path / "rgb.png", tmp_path / "grey.png"
    Image.new("RGB", (5, 4), (10, 20, 30)).save(rgb)
    Image.new("L", (5, 4), 77).save(grey)
    a, b = load_image(rgb), load_image(str(grey))
    assert (a.mode, a.size, a.getpixel((0, 0))) == ("RGB", (5, 4), (10, 20, 30))
    assert (b.mode, b.size, b.getpixel((4, 3))) == ("L", (5, 4), 77)


def test_file_is_closed_and_image_usable(tmp_path):
    path = tmp_path / "a.png"
    Image.new("RGB", (3, 3), (1, 2, 3)).save(path)
    img = load_image(path)
    path.unlink()  # the data is loaded; nothing refers to the file any more
    assert img.resize((6, 6)).getpixel((0, 0)) == (1, 2, 3)


def test_la_transparent_pixel_becomes_white(tmp_path):
    img = Image.new("LA", (2, 1), (40, 255))
    img.putpixel((1, 0), (0, 0))  # black but fully transparent
    path = tmp_path / "la.png"
    img.save(path)
    out = load_image(path)
    assert out.mode == "L"
    assert out.getpixel((0, 0)) == 40 and out.getpixel((1, 0)) == 255


def test_rgba_composited_on_white(tmp_path):
    img = Image.new("RGBA", (3, 1), (200, 0, 0, 255))
    img.putpixel((1, 0), (0, 0, 0, 0))  # fully transparent black -> white
    img.putpixel((2, 0), (0, 0, 0, 128))  # half-transparent black -> mid grey
    path = tmp_path / "rgba.png"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (200, 0, 0)
    assert out.getpixel((1, 0)) == (255, 255, 255)
    assert all(120 <= v <= 135 for v in out.getpixel((2, 0)))


def test_palette_with_transparency(tmp_path):
    img = Image.new("P", (2, 1), 0)
    img.putpalette([0, 0, 0, 0, 0, 255] + [0] * (254 * 3))  # index 0 black, index 1 blue
    img.putpixel((1, 0), 1)
    img.info["transparency"] = 0
    path = tmp_path / "p.png"
    img.save(path, transparency=0)
    assert Image.open(path).mode == "P"
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)  # the transparent index, not black
    assert out.getpixel((1, 0)) == (0, 0, 255)


def test_palette_without_transparency(tmp_path):
    img = Image.new("P", (1, 1), 0)
    img.putpalette([0, 128, 0] + [0] * 765)
    path = tmp_path / "p.gif"
    img.save(path)
    out = load_image(path)
    assert out.mode == "RGB" and out.getpixel((0, 0)) == (0, 128, 0)


def test_cmyk(tmp_path):
    img = Image.new("CMYK", (2, 1), (0, 0, 0, 0))
    img.putpixel((1, 0), (0, 255, 255, 0))  # no cyan, full magenta and yellow: red
    path = tmp_path / "cmyk.tif"
    img.save(path)
    assert Image.open(path).mode == "CMYK"
    out = load_image(path)
    assert out.mode == "RGB"
    assert out.getpixel((0, 0)) == (255, 255, 255)
    assert out.getpixel((1, 0)) == (255, 0, 0)


def test_cmyk_jpeg(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (8, 8), (0, 0, 0, 0)).save(path)
    out = load_image(path)
    assert out.mode == "RGB" and all(v >= 250 for v in out.getpixel((4, 4)))


@pytest.mark.parametrize("suffix", [".png", ".tif"])
def test_16_bit_grey_is_scaled_not_clipped(tmp_path, suffix):
    img = Image.new("I;16", (4, 1), 0)
    for x, v in enumerate([65535, 32768, 1000, 0]):
        img.putpixel((x, 0), v)
    path = tmp_path / f"deep{suffix}"
    img.save(path)
    assert Image.open(path).mode.startswith("I")
    out = load_image(path)
    assert out.mode == "L"
    values = [out.getpixel((x, 0)) for x in range(4)]
    assert values[0] == 255
    assert 127 <= values[1] <= 128  # convert("L") would clip this to 255
    assert values[2] in (3, 4) and values[3] == 0


def test_dark_16_bit_image_stays_dark(tmp_path):
    img = Image.new("I;16", (2, 1), 0)
    img.putpixel((0, 0), 200)  # 200 of 65535: almost black, even though it is below 255
    path = tmp_path / "dark.png"
    img.save(path)
    out = load_image(path)
    assert out.getpixel((0, 0)) <= 1


def test_one_bit_and_float_images(tmp_path):
    one = Image.new("1", (2, 1), 0)
    one.putpixel((1, 0), 1)
    one.save(tmp_path / "one.png")
    out = load_image(tmp_path / "one.png")
    assert out.mode == "L" and [out.getpixel((0, 0)), out.getpixel((1, 0))] == [0, 255]
    Image.new("F", (2, 2), 100.0).save(tmp_path / "f.tif")
    out = load_image(tmp_path / "f.tif")
    assert out.mode == "L" and out.getpixel((0, 0)) == 100


def test_exif_orientation_is_applied(tmp_path):
    img = Image.new("RGB", (40, 20), (255, 255, 255))
    img.paste((255, 0, 0), (0, 0, 8, 20))  # a red band on the left
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif, quality=95, subsampling=0)
    assert Image.open(path).size == (40, 20)
    out = load_image(path)
    assert out.size == (20, 40)
    # after a clockwise turn the left band is the top band
    r, g, b = out.getpixel((10, 2))
    assert r > 200 and g < 80 and b < 80
    r, g, b = out.getpixel((10, 39))
    assert min(r, g, b) > 200


def _jpeg_bytes() -> bytes:
    import random

    rng = random.Random(0)
    img = Image.new("RGB", (64, 64))
    img.putdata([(rng.randrange(256), rng.randrange(256), rng.randrange(256)) for _ in range(64 * 64)])
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=90)
    return buf.getvalue()


def test_truncated_jpeg(tmp_path):
    data = _jpeg_bytes()
    path = tmp_path / "cut.jpg"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as info:
        load_image(path)
    message = str(info.value)
    assert message.startswith(f"{path}: not a readable image")
    assert "truncated" in message and "\n" not in message


def test_zero_byte_jpeg(tmp_path):
    path = tmp_path / "empty.jpg"
    path.touch()
    with pytest.raises(DataError) as info:
        load_image(path)
    assert str(info.value) == f"{path}: not a readable image (empty file)"


def test_text_file_with_image_name(tmp_path):
    path = tmp_path / "fake.png"
    path.write_text("hello")
    with pytest.raises(DataError, match="not a readable image") as info:
        load_image(path)
    assert str(path) in str(info.value)


def test_missing_file_and_directory(tmp_path):
    with pytest.raises(DataError, match="no such file") as info:
        load_image(tmp_path / "nope.png")
    assert str(tmp_path / "nope.png") in str(info.value)
    with pytest.raises(DataError, match="is a directory"):
        load_image(tmp_path)
