import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data.errors import BadInputError
from data.images import load_rgb


def _gradient(h=20, w=30):
    y, x = np.mgrid[0:h, 0:w]
    return np.stack([x * 8 % 256, y * 12 % 256, (x + y) * 4 % 256], -1).astype(np.uint8)


@pytest.mark.parametrize("mode", ["L", "RGBA", "CMYK", "P", "LA", "1", "RGB"])
def test_every_common_mode_becomes_rgb_uint8(tmp_path, mode):
    path = tmp_path / f"image_{mode}.{'jpg' if mode in ('CMYK', 'L', 'RGB') else 'png'}"
    Image.fromarray(_gradient()).convert(mode).save(path)
    rgb = load_rgb(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (20, 30, 3)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    a = (np.linspace(0, 65535, 20 * 30).reshape(20, 30)).astype(np.uint16)
    path = tmp_path / "depth16.png"
    Image.fromarray(a).save(path)
    rgb = load_rgb(path)
    assert rgb[0, 0, 0] == 0 and rgb[-1, -1, 0] == 255 and 100 < rgb[10, 15, 0] < 160


def test_exif_rotated_jpeg_comes_out_upright(tmp_path):
    img = Image.fromarray(_gradient(20, 30))
    exif = img.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    path = tmp_path / "rotated.jpg"
    img.save(path, exif=exif)
    assert load_rgb(path).shape == (30, 20, 3)


def test_cmyk_colours_are_converted(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.new("CMYK", (16, 16), (0, 255, 255, 0)).save(path, quality=100)  # pure red in CMYK
    r, g, b = load_rgb(path)[8, 8]
    assert r > 200 and g < 60 and b < 60


def test_transparent_pixels_are_composited_on_white(tmp_path):
    path = tmp_path / "alpha.png"
    Image.new("RGBA", (8, 8), (255, 0, 0, 0)).save(path)
    assert load_rgb(path)[0, 0].tolist() == [255, 255, 255]


@pytest.mark.parametrize("content,match", [(b"", "empty"), (b"\x89PNG garbage" * 10, "not a readable image")])
def test_bad_files_raise_with_the_file_name(tmp_path, content, match):
    path = tmp_path / "bad image!.png"
    path.write_bytes(content)
    with pytest.raises(BadInputError, match=match) as err:
        load_rgb(path)
    assert "bad image!.png" in str(err.value)


def test_truncated_jpeg_is_rejected(tmp_path):
    good = tmp_path / "good.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(good)
    bad = tmp_path / "truncated.jpg"
    bad.write_bytes(good.read_bytes()[:200])
    with pytest.raises(BadInputError, match="truncated.jpg"):
        load_rgb(bad)


def _png_header_only(path, width, height):
    """A PNG whose header claims width x height: enough for the size check, no pixels to decode."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IEND", b""))


def test_tiny_and_huge_images_are_refused(tmp_path):
    tiny = tmp_path / "one_pixel.png"
    Image.new("RGB", (1, 1)).save(tiny)
    with pytest.raises(BadInputError, match="1x1"):
        load_rgb(tiny)
    for w, h in [(20000, 20000), (12000, 9000)]:  # beyond PIL's bomb limit, and between it and ours
        huge = tmp_path / f"huge_{w}.png"
        _png_header_only(huge, w, h)
        with pytest.raises(BadInputError, match="larger than the limit"):
            load_rgb(huge)


def test_missing_file(tmp_path):
    with pytest.raises(BadInputError, match="does not exist"):
        load_rgb(tmp_path / "nope.jpg")
