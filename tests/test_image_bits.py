"""Photos reach the model by their significant bits: 10/12-bit data in 16-bit PNGs (sBIT), 16-bit samples at their
full depth, 32-bit integer and float TIFFs by a stated rule, multi-page TIFFs refused, and --mode crop refusing
photos it would shrink every view for. Values are checked through the readers `iggt predict` and the datasets use."""
import struct
import warnings
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from iggt_lightning.data.frames import DatasetError, read_rgb
from iggt_lightning.imageio import ImageWarning
from iggt_lightning.inference.images import InputError, load_image, preprocess

COLOUR_TYPES = {1: 0, 2: 4, 3: 2, 4: 6}      # channels -> PNG colour type


def chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png16(path: Path, samples: np.ndarray, sbit: tuple[int, ...] | None = None) -> Path:
    """A 16-bit PNG of ``samples`` [H,W,C] (C: 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA), written byte by byte (Pillow
    writes no 16-bit colour PNG and no sBIT); rows cycle through the None, Sub and Up filters, so the decoder's
    unfiltering (which needs the right bytes per pixel) is exercised."""
    h, w, c = samples.shape
    rows = np.frombuffer(samples.astype(">u2").tobytes(), np.uint8).reshape(h, w * c * 2).astype(np.int64)
    bpp = 2 * c
    body = b""
    for y in range(h):
        kind = y % 3
        row = rows[y]
        if kind == 1:                                   # Sub: minus the byte one pixel to the left
            left = np.concatenate([np.zeros(bpp, np.int64), row[:-bpp]])
            row = row - left
        elif kind == 2:                                 # Up: minus the byte above
            row = row - (rows[y - 1] if y else 0)
        body += bytes([kind]) + (row % 256).astype(np.uint8).tobytes()
    extra = chunk(b"sBIT", bytes(sbit)) if sbit is not None else b""
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, COLOUR_TYPES[c], 0, 0, 0))
                     + extra + chunk(b"IDAT", zlib.compress(body)) + chunk(b"IEND", b""))
    return path


def read_both(path: Path, *warning: str) -> np.ndarray:
    """The photo as `iggt predict` (load_image) and the dataset readers (read_rgb) read it: equal, RGB uint8;
    the warnings each gives contain ``warning`` (none when not given)."""
    got = []
    for fn in (load_image, read_rgb):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            got.append(fn(path))
        ours = [str(w.message) for w in caught if issubclass(w.category, ImageWarning)]
        if warning:
            assert len(ours) == 1 and str(path) in ours[0], ours
            assert all(part in ours[0] for part in warning), ours[0]
        else:
            assert not ours, ours
    assert got[0].dtype == np.uint8 and got[0].ndim == 3 and got[0].shape[2] == 3
    np.testing.assert_array_equal(got[0], got[1])
    return got[0]


def refused_by_both(path: Path, *match: str) -> None:
    for fn, err in ((load_image, InputError), (read_rgb, DatasetError)):
        with pytest.raises(err) as info:
            fn(path)
        msg = str(info.value)
        assert str(path) in msg and "\n" not in msg, msg
        assert all(m in msg for m in match), msg


def scaled(values: np.ndarray, top: int) -> np.ndarray:
    return np.round(values * 255.0 / top).astype(np.uint8)


rng = np.random.default_rng(7)


# -- 16-bit PNGs ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("bits", [12, 10])
def test_right_aligned_10_and_12_bit_rgb_with_sbit_reach_full_brightness(tmp_path, bits):
    top = (1 << bits) - 1
    values = rng.integers(0, top + 1, (9, 11, 3))
    values[0, 0] = top                                   # white is white
    got = read_both(png16(tmp_path / f"rgb{bits}.png", values, (bits,) * 3))
    np.testing.assert_array_equal(got, scaled(values, top))
    assert got.max() == 255


def test_the_same_data_without_sbit_is_read_as_16_bit_and_warned_about(tmp_path):
    values = rng.integers(0, 4096, (9, 11, 3))
    values[0, 0] = 4095
    path = png16(tmp_path / "nosbit.png", values)
    got = read_both(path, "4095", "sBIT", "10- or 12-bit")
    np.testing.assert_array_equal(got, scaled(values, 65535))   # the PNG specification's reading: dark
    assert got.max() <= 16
    stated = read_both(png16(tmp_path / "sbit16.png", values, (16, 16, 16)))   # says 16 bits: no warning
    np.testing.assert_array_equal(stated, got)


def test_left_aligned_data_with_sbit_is_read_as_the_png_specification_says(tmp_path):
    values = rng.integers(0, 4096, (9, 11, 3))
    values[0, 0] = 4095
    left = values << 4 | values >> 8                    # shifted left, top bits replicated into the low ones
    got = read_both(png16(tmp_path / "left.png", left, (12, 12, 12)))
    np.testing.assert_array_equal(got, scaled(left, 65535))
    assert np.abs(got.astype(int) - scaled(values, 4095)).max() <= 1


def test_16_bit_rgb_is_read_at_16_bits_not_by_its_high_byte(tmp_path):
    values = rng.integers(0, 65536, (12, 10, 3))
    got = read_both(png16(tmp_path / "full.png", values))
    np.testing.assert_array_equal(got, scaled(values, 65535))
    assert (got != values >> 8).any()                   # Pillow's 8-bit reading would differ


@pytest.mark.parametrize("channels,sbit", [(1, (10,)), (2, (12, 12)), (4, (12, 12, 12, 12))])
def test_grey_and_alpha_pngs_by_their_significant_bits(tmp_path, channels, sbit):
    top = (1 << sbit[0]) - 1
    values = rng.integers(0, top + 1, (8, 9, channels))
    got = read_both(png16(tmp_path / f"c{channels}.png", values, sbit))
    colour = values[..., :3] if channels == 4 else values[..., :1]
    if channels in (2, 4):                             # transparency on white, as for 8-bit photos
        a = values[..., -1:] / top
        expected = np.round((colour / top * a + 1 - a) * 255)
    else:
        expected = scaled(colour, top)
    np.testing.assert_array_equal(got, np.broadcast_to(expected, got.shape))


def test_an_invalid_sbit_chunk_is_ignored_with_a_warning(tmp_path):
    values = rng.integers(0, 65536, (5, 6, 3))
    got = read_both(png16(tmp_path / "badsbit.png", values, (0, 17)), "sBIT", "ignored")
    np.testing.assert_array_equal(got, scaled(values, 65535))


def test_exif_orientation_applies_to_16_bit_samples(tmp_path):
    values = rng.integers(0, 4096, (6, 10, 3))
    path = png16(tmp_path / "turned.png", values, (12, 12, 12))
    exif = Image.Exif()
    exif[0x0112] = 6                                    # rotate 90 degrees clockwise to view
    data = path.read_bytes()
    at = data.index(b"IDAT") - 4
    path.write_bytes(data[:at] + chunk(b"eXIf", exif.tobytes()) + data[at:])
    np.testing.assert_array_equal(read_both(path), np.rot90(scaled(values, 4095), -1))


# -- TIFFs ---------------------------------------------------------------------------------------------------
def test_32_bit_integer_tiff_holding_8_bit_values_is_read_as_8_bit_with_a_warning(tmp_path):
    values = rng.integers(0, 256, (7, 9))
    values[0, 0] = 255
    path = tmp_path / "int32.tif"
    Image.fromarray(values.astype(np.int32)).save(path)
    got = read_both(path, "32-bit integer", "0..255", "8-bit")
    np.testing.assert_array_equal(got, np.repeat(values[..., None], 3, -1).astype(np.uint8))
    wide = tmp_path / "int32_16.tif"
    Image.fromarray((values * 257).astype(np.int32)).save(wide)
    np.testing.assert_array_equal(read_both(wide, "16-bit"), got)
    Image.fromarray(np.full((3, 3), -5, np.int32)).save(tmp_path / "neg.tif")
    refused_by_both(tmp_path / "neg.tif", "-5", "0..255", "0..65535")


def test_float_tiff_of_whole_numbers_is_read_as_8_bit_values_with_a_warning(tmp_path):
    values = rng.integers(0, 256, (7, 9)).astype(np.float32)
    values[0, 0] = 255
    path = tmp_path / "float255.tif"
    Image.fromarray(values).save(path)
    got = read_both(path, "whole numbers", "8-bit")
    np.testing.assert_array_equal(got[..., 0], values.astype(np.uint8))
    Image.fromarray(values + 0.5).save(tmp_path / "radiance.tif")
    refused_by_both(tmp_path / "radiance.tif", "[0, 1]")


def tiff16_rgb(path: Path, values: np.ndarray) -> Path:
    """An uncompressed 16-bit RGB TIFF (Pillow writes none), little-endian."""
    h, w, _ = values.shape
    data = values.astype("<u2").tobytes()
    entries = [(256, 4, w), (257, 4, h), (258, 3, None), (259, 3, 1), (262, 3, 2), (273, 4, None), (277, 3, 3),
               (278, 4, h), (279, 4, len(data)), (284, 3, 1)]
    bits_at = 8 + 2 + 12 * len(entries) + 4
    out = b"II*\0" + struct.pack("<IH", 8, len(entries))
    for tag, typ, value in entries:
        count = 3 if tag == 258 else 1
        value = bits_at if tag == 258 else bits_at + 6 if tag == 273 else value
        out += struct.pack("<HHI", tag, typ, count) + (struct.pack("<HH", value, 0) if typ == 3 and count == 1
                                                      else struct.pack("<I", value))
    path.write_bytes(out + struct.pack("<I", 0) + struct.pack("<HHH", 16, 16, 16) + data)
    return path


def test_16_bit_rgb_tiff_of_12_bit_data_is_warned_about(tmp_path):
    path = tiff16_rgb(tmp_path / "rgb12.tif", rng.integers(0, 4096, (5, 7, 3)))
    with Image.open(path) as im:
        assert im.mode == "RGB" and im.tag_v2[258] == (16, 16, 16)
    assert read_both(path, "4095", "16 bits").max() <= 15
    read_both(tiff16_rgb(tmp_path / "rgb16.tif", rng.integers(0, 65536, (5, 7, 3))))   # full range: no warning


def test_multi_page_tiff_is_refused_naming_the_file_and_its_pages(tmp_path):
    pages = [Image.fromarray(rng.integers(0, 256, (6, 8, 3), dtype=np.uint8)) for _ in range(3)]
    path = tmp_path / "stack.tif"
    pages[0].save(path, save_all=True, append_images=pages[1:])
    refused_by_both(path, "multi-page", "3 pages")
    pages[0].save(tmp_path / "single.tif")
    np.testing.assert_array_equal(read_both(tmp_path / "single.tif"), np.asarray(pages[0]))


def test_an_animation_gives_its_first_frame_with_a_warning(tmp_path):
    frames = [Image.new("RGB", (8, 6), (200, 10 * k, 30)) for k in range(4)]
    path = tmp_path / "anim.png"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    got = read_both(path, "4 frames", "first frame")
    np.testing.assert_array_equal(got, np.asarray(frames[0]))


def test_ordinary_8_bit_photos_are_pillows_pixels(tmp_path):
    photo = rng.integers(0, 256, (10, 12, 3), dtype=np.uint8)
    for name in ("p.png", "p.tif", "p.bmp"):
        Image.fromarray(photo).save(tmp_path / name)
        np.testing.assert_array_equal(read_both(tmp_path / name), photo)
    Image.fromarray(photo).save(tmp_path / "p.jpg", quality=90)
    with Image.open(tmp_path / "p.jpg") as im:
        np.testing.assert_array_equal(read_both(tmp_path / "p.jpg"), np.asarray(im.convert("RGB")))


# -- --mode crop ---------------------------------------------------------------------------------------------
def test_crop_refuses_an_extreme_aspect_ratio_naming_the_photo_and_its_size():
    normal = [np.zeros((30, 40, 3), np.uint8)] * 2
    with pytest.raises(InputError) as info:
        preprocess([*normal, np.zeros((3, 2000, 3), np.uint8)], "crop", (56, 56), 14, ["a.png", "b.png", "pano.png"])
    msg = str(info.value)
    assert "pano.png" in msg and "2000x3" in msg and "4:1" in msg and "56x14" in msg and "--mode pad" in msg, msg
    with pytest.raises(InputError, match=r"strip.png is 3x2000 px.*middle"):
        preprocess([*normal, np.zeros((2000, 3, 3), np.uint8)], "crop", (56, 56), 14, ["a", "b", "strip.png"])
    images, _ = preprocess([*normal, np.zeros((10, 40, 3), np.uint8)], "crop", (56, 56), 14)   # 4:1 is accepted
    assert images.shape == (3, 3, 14, 56)
    images, _ = preprocess([*normal, np.zeros((3, 2000, 3), np.uint8)], "pad", (56, 56), 14)  # pad takes it whole
    assert images.shape == (3, 3, 56, 56)


def test_predict_dry_run_refuses_the_panorama_under_crop(tmp_path, nano_model, capsys):
    from iggt_lightning.checkpoints import save_model
    from iggt_lightning.cli import main

    save_model(nano_model, tmp_path / "nano.safetensors")
    photos = tmp_path / "photos"
    photos.mkdir()
    for i in range(2):
        Image.fromarray(rng.integers(0, 256, (42, 56, 3), dtype=np.uint8)).save(photos / f"view_{i}.png")
    Image.fromarray(rng.integers(0, 256, (3, 2000, 3), dtype=np.uint8)).save(photos / "wide.png")
    args = ["predict", str(photos), "-c", str(tmp_path / "nano.safetensors"), "-o", str(tmp_path / "out"),
            "--quiet", "--dry-run", "--mode"]
    assert main([*args, "crop"]) == 2
    err = capsys.readouterr().err
    assert "wide.png is 2000x3 px" in err and len(err.strip().splitlines()) == 1, err
    assert main([*args, "pad"]) == 0
