"""The one door every image file of the project goes through (embedding, training, acquisition,
DeepFace labelling, image grids), with one pixel limit: config `images.max_pixels`.

The limit is read from the file's header and enforced BEFORE any pixel is decoded, so a
decompression bomb (a few KB of PNG that would decode to gigabytes) is refused cheaply. PIL's own
guard (a warning at `Image.MAX_IMAGE_PIXELS`, an error at twice that) fires inside `Image.open`,
before our check; both are refused here with the same sentence as our own limit, which is why the
limit may not exceed PIL's.
"""
from __future__ import annotations

import os
import warnings
from io import BytesIO

from PIL import Image, ImageOps

from vlmbias import VlmbiasError

DEFAULT_MAX_PIXELS = 40_000_000  # width x height; a 6000 x 6000 photo passes, PIL's guard starts at ~89M
CONFIG_KEY = "images.max_pixels"


class ImageRefused(VlmbiasError):
    """An image larger than the pixel limit (a possible decompression bomb); nothing was decoded."""


def refusal(max_pixels: int) -> str:
    """The sentence every caller reports for an oversized image (the same for every stage)."""
    return (f"image refused before decoding: more than {max_pixels} pixels ({CONFIG_KEY}), "
            "a possible decompression bomb")


def check_limit(max_pixels) -> int:
    """The limit as an int; bad values are a VlmbiasError naming the config key."""
    pil_limit = Image.MAX_IMAGE_PIXELS
    if isinstance(max_pixels, bool) or not isinstance(max_pixels, int) or max_pixels < 1 or (
            pil_limit is not None and max_pixels > pil_limit):
        top = f" and at most {pil_limit} (PIL's own decompression-bomb limit)" if pil_limit else ""
        raise VlmbiasError(f"{CONFIG_KEY} must be an integer of at least 1{top}, got {max_pixels!r}")
    return max_pixels


def open_image(source: str | os.PathLike | bytes, max_pixels: int = DEFAULT_MAX_PIXELS, *, mode: str | None = "RGB",
               exif_transpose: bool = False) -> Image.Image:
    """Decode an image file (or its bytes) fully, refusing it from its header when it has more than
    `max_pixels` pixels (ImageRefused). Truncated or corrupt data fails here, at decode, with PIL's
    own exception. `mode`: convert to it ("RGB": CMYK, grayscale, palette and RGBA alike; None: keep
    the file's mode, e.g. to composite alpha). `exif_transpose`: apply the EXIF orientation. The
    result is detached from the file; its `.format` is the file's format."""
    max_pixels = check_limit(max_pixels)
    fp = BytesIO(source) if isinstance(source, (bytes, bytearray)) else source
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(fp) as img:
                w, h = img.size
                if w * h > max_pixels:
                    raise ImageRefused(refusal(max_pixels))
                img.load()
                out = ImageOps.exif_transpose(img) if exif_transpose else img
                out = out.convert(mode) if mode else out.copy()
                out.format = img.format  # kept for callers that sort files by format (acquisition)
                return out
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise ImageRefused(refusal(max_pixels)) from None


def crop_to(img: Image.Image, crop) -> Image.Image:
    """The part of `img` inside a manifest `crop` box (`x,y,width,height` in pixels of the file as
    stored, before any EXIF rotation), clipped to the image; a null or empty box: the whole image.
    A box entirely outside the image is an error (ValueError)."""
    if crop is None or (isinstance(crop, float) and crop != crop) or str(crop).strip() == "":
        return img
    try:
        x, y, w, h = (float(v) for v in str(crop).split(","))
    except ValueError:
        raise ValueError(f"crop box {crop!r} is not x,y,width,height") from None
    box = (max(0.0, x), max(0.0, y), min(float(img.width), x + w), min(float(img.height), y + h))
    if box[2] <= box[0] or box[3] <= box[1]:
        raise ValueError(f"crop box {crop} lies outside the {img.width}x{img.height} image")
    return img.crop(tuple(round(v) for v in box))
