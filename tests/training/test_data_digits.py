"""Digits: the split is a seeded, stratified partition of scikit-learn's data; images survive a
write/read round trip, read the same dark-on-light as bright-on-dark, and images in other modes
and formats (colour, palette, alpha, 1-bit, 16-bit, JPEG), made with Pillow, read the same as the
plain grayscale ones."""

from __future__ import annotations

import struct
import zlib
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from sklearn.datasets import load_digits

from encoderkit.training.data.digits import (
    DigitsSplit,
    load_digits_split,
    read_digit_image,
    write_digit_image,
)


@pytest.fixture(scope="module")
def split():
    return load_digits_split()


@pytest.fixture(scope="module")
def full():
    digits = load_digits()
    return digits.images.astype(np.float32) / 16, digits.target


def assert_near(actual, expected, tolerance, name=""):
    assert actual.shape == expected.shape and actual.dtype == expected.dtype, name
    assert float((actual - expected).abs().max()) <= tolerance, name


def sorted_rows(images, labels):
    rows = np.concatenate([images.reshape(len(labels), -1), labels[:, None]], axis=1)
    return rows[np.lexsort(rows.T[::-1])]


def test_split_shapes_and_values(split):
    assert isinstance(split, DigitsSplit)
    assert split.train_images.shape == (1437, 1, 8, 8)
    assert split.test_images.shape == (360, 1, 8, 8)
    assert split.train_labels.shape == (1437,) and split.test_labels.shape == (360,)
    assert split.train_images.dtype == torch.float32 and split.train_labels.dtype == torch.int64
    for images in (split.train_images, split.test_images):
        assert images.min() >= 0 and images.max() <= 1
        assert torch.equal(images * 16, (images * 16).round())  # the 0..16 counts, divided by 16


def test_split_is_a_partition_of_the_data(split, full):
    # train + test is the whole data set, each image once (as multisets, so disjoint and complete)
    images = torch.cat([split.train_images, split.test_images]).numpy()
    labels = torch.cat([split.train_labels, split.test_labels]).numpy()
    np.testing.assert_array_equal(sorted_rows(images, labels), sorted_rows(*full))


def test_split_is_stratified(split, full):
    per_class = np.bincount(full[1])
    train = np.bincount(split.train_labels.numpy(), minlength=10)
    test = np.bincount(split.test_labels.numpy(), minlength=10)
    assert (train > 0).all() and (test > 0).all()
    np.testing.assert_array_equal(train + test, per_class)
    assert np.abs(test - per_class * 360 / 1797).max() <= 1  # each class's share, up to rounding


def test_split_is_deterministic_and_seeded(split):
    again = load_digits_split()
    for a, b in zip(split, again, strict=True):
        assert torch.equal(a, b)
    other = load_digits_split(seed=1)
    assert not torch.equal(other.test_labels, split.test_labels)
    assert load_digits_split(test_fraction=0.5).test_labels.shape == (899,)


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"test_fraction": 0.0}, ValueError, "at least 10 images"),
        ({"test_fraction": 1.0}, ValueError, "at least 10 images"),
        ({"test_fraction": 0.001}, ValueError, r"got 0.001"),
        ({"test_fraction": "0.2"}, TypeError, "test_fraction must be a float, got str"),
        ({"seed": -1}, ValueError, "seed must be a non-negative int, got -1"),
    ],
)
def test_split_rejects_bad_arguments(kwargs, error, message):
    with pytest.raises(error, match=message):
        load_digits_split(**kwargs)


def test_round_trip(split, tmp_path):
    # 0.5/255 of rounding, divided by the image's maximum (at least 14/16 in this data set)
    images = torch.cat([split.test_images[split.test_labels == c][:2] for c in range(10)])
    worst = 0.0
    for image in images:
        back = read_digit_image(write_digit_image(image, tmp_path / "digit.png"))
        assert back.shape == (1, 8, 8) and back.dtype == torch.float32
        worst = max(worst, float((back - image / image.max()).abs().max()))
    assert 0 < worst <= 0.003  # measured 0.0026 over all 1,797 images


def test_round_trip_of_an_exactly_representable_image(tmp_path):
    generator = torch.Generator().manual_seed(0)
    image = torch.randint(0, 200, (8, 8), generator=generator) / 255.0  # mostly dark: mean < 0.5
    image[0, 0] = 1.0
    back = read_digit_image(write_digit_image(image, tmp_path / "d.png", scale=3))
    assert_near(back[0], image.float(), 1e-6)


def test_a_mostly_bright_image_is_taken_for_dark_ink_on_paper(tmp_path):
    # the documented limit of the round trip: mean > 0.5 reads as paper, and is inverted
    image = torch.full((8, 8), 204 / 255)  # 0.8: values on the 1/255 grid, so stored exactly
    image[0, 0] = 51 / 255  # 0.2
    back = read_digit_image(write_digit_image(image, tmp_path / "d.png"))
    expected = torch.full((8, 8), 0.25)  # 1 - x is 0.2 and 0.8; rescaled to a maximum of 1
    expected[0, 0] = 1.0
    assert_near(back[0], expected, 1e-6)


def test_dark_ink_on_light_paper_reads_like_bright_ink_on_black(split, tmp_path):
    for image in split.train_images[:8]:
        quantised = (image * 255).round() / 255  # so that 1 - x is stored exactly too
        bright = read_digit_image(write_digit_image(quantised, tmp_path / "bright.png"))
        dark = read_digit_image(write_digit_image(1 - quantised, tmp_path / "dark.png"))
        assert_near(dark, bright, 1e-6)


def test_a_large_drawing_is_area_averaged_like_the_uci_blocks(tmp_path):
    # UCI made each 8x8 digit by counting ink in the 4x4 blocks of a 32x32 bitmap
    rng = np.random.default_rng(0)
    bitmap = (rng.random((32, 32)) < 0.3).astype(np.uint8)
    Image.fromarray(bitmap * 255).save(tmp_path / "big.png")
    counts = bitmap.reshape(8, 4, 8, 4).sum(axis=(1, 3))
    expected = torch.from_numpy(counts / counts.max()).float()
    assert_near(read_digit_image(tmp_path / "big.png")[0], expected, 1e-6)


def test_non_square_and_non_multiple_sizes_resize_by_area(tmp_path):
    ink = np.zeros((30, 20), dtype=np.uint8)
    ink[:15, :] = 255  # the top half bright: rows 0-3 of the 8x8 full, rows 4-7 empty
    Image.fromarray(ink).save(tmp_path / "half.png")
    expected = torch.zeros(8, 8)
    expected[:4] = 1
    assert_near(read_digit_image(tmp_path / "half.png")[0], expected, 1e-6)


def test_blank_image_stays_zero(tmp_path):
    assert torch.equal(
        read_digit_image(write_digit_image(torch.zeros(8, 8), tmp_path / "b.png")),
        torch.zeros(1, 8, 8),
    )


# Images as other tools save them: every mode is made with Pillow from the same levels and must
# read like the plain 8-bit grayscale PNG.


def read_saved(image, path, **save_options):
    image.save(path, **save_options)
    return read_digit_image(path)


@pytest.fixture
def digit_levels():
    """A 24x24 digit-like picture, 0..255 bright ink on black."""
    levels = np.zeros((24, 24), dtype=np.uint8)
    levels[3:21, 10:14] = 255
    levels[3:7, 6:14] = 200
    levels[19:22, 5:19] = 90
    return levels


def test_other_modes_read_like_plain_grayscale(tmp_path, digit_levels):
    expected = read_saved(Image.fromarray(digit_levels), tmp_path / "gray.png")
    gray3 = np.repeat(digit_levels[..., None], 3, axis=2)
    opaque = np.full_like(digit_levels, 255)
    values = np.unique(digit_levels)
    palette = Image.fromarray(np.searchsorted(values, digit_levels).astype(np.uint8), mode="P")
    palette.putpalette([c for v in values for c in (v, v, v)])
    images = {
        "RGB": Image.fromarray(gray3),
        "RGBA": Image.fromarray(np.dstack([gray3, opaque])),
        "LA": Image.fromarray(np.dstack([digit_levels, opaque])),
        "I;16": Image.fromarray(digit_levels.astype(np.uint16) * 257),  # 16-bit PNG
        "P": palette,
    }
    for mode, image in images.items():
        assert image.mode == mode
        got = read_saved(image, tmp_path / f"{mode.replace(';', '')}.png")
        assert_near(got, expected, 1e-6, mode)  # measured: identical (0.0)


def test_one_bit_and_transparent_images(tmp_path):
    # each measured identical (0.0) to the plain grayscale reading
    bitmap = np.zeros((16, 16), dtype=bool)
    bitmap[2:14, 7:9] = True
    expected = read_saved(Image.fromarray(bitmap.astype(np.uint8) * 255), tmp_path / "b8.png")
    assert expected.max() == 1
    one_bit = Image.fromarray(bitmap)
    assert one_bit.mode == "1"
    assert_near(read_saved(one_bit, tmp_path / "b1.png"), expected, 1e-6)
    # black ink on a transparent background, which viewers show on white: the RGB under the
    # transparent pixels is arbitrary, and only the composite over white counts
    rgba = np.zeros((16, 16, 4), dtype=np.uint8)
    rgba[..., :3] = np.random.default_rng(0).integers(0, 256, (16, 16, 3))
    rgba[..., :3][bitmap] = 0
    rgba[..., 3] = bitmap * 255
    assert_near(read_saved(Image.fromarray(rgba), tmp_path / "ink.png"), expected, 1e-6)
    # the same with a palette whose background entry is fully transparent (PNG tRNS)
    palette = Image.fromarray(bitmap.astype(np.uint8), mode="P")
    palette.putpalette([17, 200, 3, 0, 0, 0])
    got = read_saved(palette, tmp_path / "p.png", transparency=0)
    assert_near(got, expected, 1e-6)
    # and a grayscale image whose background level (77) is marked transparent
    keyed = Image.fromarray(np.where(bitmap, 0, 77).astype(np.uint8))
    assert_near(read_saved(keyed, tmp_path / "k.png", transparency=77), expected, 1e-6)


def as_read(gray):
    """What read_digit_image documents for an 8x8 grayscale picture in [0, 1] (float64)."""
    if gray.mean() > 0.5:
        gray = 1 - gray
    return torch.from_numpy(gray / gray.max()).float()[None]


def test_colour_reads_as_luma_over_white_paper(tmp_path):
    # 8x8, so the area average leaves it as it is, and the reading can be computed by hand; one
    # opaque white and one opaque black pixel pin the maximum at 1 (before or after inverting),
    # so the rescaling does not stretch Pillow's rounding
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (8, 8, 3)).astype(np.uint8)
    alpha = rng.integers(0, 256, (8, 8)).astype(np.uint8)
    rgb[0, 0], rgb[0, 1], alpha[0, :2] = 255, 0, 255
    luma = rgb @ np.array([0.299, 0.587, 0.114]) / 255  # ITU-R 601-2
    got = read_saved(Image.fromarray(rgb), tmp_path / "rgb.png")
    # Pillow rounds the luma to 8 bits (measured: 0.48/255 here; up to 0.498/255 over seeds 1-5)
    assert_near(got, as_read(luma), 0.5 / 255)
    a = alpha / 255
    got = read_saved(Image.fromarray(np.dstack([rgb, alpha])), tmp_path / "rgba.png")
    # rounded twice: the composite's RGB, then its luma (measured: 0.77/255 here; up to 0.82/255
    # over seeds 1-5)
    assert_near(got, as_read(a * luma + (1 - a)), 1 / 255)


def test_jpeg(tmp_path, digit_levels):
    expected = read_saved(Image.fromarray(digit_levels), tmp_path / "gray.png")
    dark = Image.fromarray(255 - digit_levels)  # dark ink on paper, as photographed or scanned
    got = read_saved(dark, tmp_path / "d.jpg", quality=95)
    assert (got - expected).abs().max() < 0.01  # JPEG is lossy (measured: 0.0055 at quality 95)
    got = read_saved(dark.convert("RGB"), tmp_path / "c.jpg", quality=75)
    assert (got - expected).abs().max() < 0.04  # measured: 0.027 at quality 75


def test_read_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no image file at .*missing.png"):
        read_digit_image(tmp_path / "missing.png")
    with pytest.raises(ValueError, match="expected an image file at"):
        read_digit_image(tmp_path)
    noise = torch.from_numpy(np.random.default_rng(0).random((8, 8)))
    good = write_digit_image(noise, tmp_path / "good.png", scale=16).read_bytes()
    # the header intact, so the file opens, and the pixel data cut short: only decoding fails
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[: len(good) // 2])
    with Image.open(truncated) as image:
        assert image.size == (128, 128)
    with pytest.raises(ValueError, match="cannot read .*truncated.png as an image: .*truncated"):
        read_digit_image(truncated)
    broken = tmp_path / "broken.png"
    broken.write_bytes(good[:-20] + bytes(20))  # the end of the pixel data and IEND zeroed
    with pytest.raises(ValueError, match="cannot read .*broken.png as an image"):
        read_digit_image(broken)
    header_only = tmp_path / "header.png"
    header_only.write_bytes(good[:30])
    with pytest.raises(ValueError, match="cannot read .*header.png as an image"):
        read_digit_image(header_only)
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    with pytest.raises(ValueError, match="cannot read .*notes.png as an image: cannot identify"):
        read_digit_image(text)


def zero_by_zero_png():
    """A well-formed PNG whose header says 0 x 0 pixels, which the format forbids."""

    def chunk(kind, data):
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = struct.pack(">IIBBBBB", 0, 0, 8, 0, 0, 0, 0)  # 0 x 0, 8-bit grayscale
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b""))
        + chunk(b"IEND", b"")
    )


@pytest.mark.parametrize("width, height", [(0, 0), (0, 5), (7, 0)])
def test_an_image_without_pixels_is_refused_naming_its_size(tmp_path, width, height):
    path = tmp_path / "empty.png"
    path.write_bytes(zero_by_zero_png())
    with pytest.raises(ValueError, match="cannot read .*empty.png as an image"):
        read_digit_image(path)  # Pillow 13 refuses to open (or write) such files itself
    # Other readers or Pillow versions may decode one: stand in for that with a 0-pixel image
    empty = Image.new("L", (width, height))
    with mock.patch.object(Image, "open", return_value=empty) as opened:
        with pytest.raises(
            ValueError,
            match=rf"expected an image of at least 1 x 1 pixels in .*empty.png, got "
            rf"{width} x {height}",
        ):
            read_digit_image(path)
    opened.assert_called_once_with(path)


def test_write_checks_its_input(tmp_path):
    target = tmp_path / "d.png"
    with pytest.raises(TypeError, match="must be a torch.Tensor, got ndarray"):
        write_digit_image(np.zeros((8, 8)), target)
    with pytest.raises(ValueError, match=r"shape \(1, H, W\) or \(H, W\), got \(3, 8, 8\)"):
        write_digit_image(torch.zeros(3, 8, 8), target)
    with pytest.raises(ValueError, match="in \\[0, 1\\], got min -0.5"):
        write_digit_image(torch.full((8, 8), -0.5), target)
    with pytest.raises(ValueError, match="finite"):
        write_digit_image(torch.full((8, 8), float("nan")), target)
    with pytest.raises(TypeError, match="floats in \\[0, 1\\], got dtype torch.int64"):
        write_digit_image(torch.zeros(8, 8, dtype=torch.int64), target)
    with pytest.raises(ValueError, match="scale must be an int >= 1, got 0"):
        write_digit_image(torch.zeros(8, 8), target, scale=0)
    with pytest.raises(ValueError, match="ending in .png, got .*d.jpg"):
        write_digit_image(torch.zeros(8, 8), tmp_path / "d.jpg")
    assert list(tmp_path.iterdir()) == []


def test_write_upscales_by_nearest_neighbour(tmp_path):
    image = torch.zeros(1, 8, 8)
    image[0, 2, 5] = 1.0
    path = write_digit_image(image, tmp_path / "d.png", scale=4)
    with Image.open(path) as written:
        assert (written.format, written.mode, written.size) == ("PNG", "L", (32, 32))
        pixels = np.asarray(written)
    expected = np.zeros((32, 32), dtype=np.uint8)
    expected[8:12, 20:24] = 255
    np.testing.assert_array_equal(pixels, expected)
