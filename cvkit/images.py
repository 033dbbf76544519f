"""The one image loader: every command and dataset reads pictures through ``load_image``.

It names the file in every error, applies EXIF orientation, composites transparency on white and
scales 16-bit images instead of clipping them. It returns an ``L`` image for grayscale sources and
an ``RGB`` image for everything else; transforms convert to the model's channel count.
"""

from __future__ import annotations

from pathlib import Path

from cvkit.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp", ".gif")


def load_image(path, *, min_side: int | None = None, data: bytes | None = None, max_pixels: int | None = None):
    """Read one image. ``min_side``: the smallest shorter side the caller needs; a JPEG much larger
    than that is decoded at a reduced scale (1/2, 1/4 or 1/8, Pillow's ``draft``), which is several
    times faster and never goes below ``min_side``. ``data``: the encoded image itself (e.g. a
    record of a tar shard); ``path`` then only names it in errors. ``max_pixels``: refuse a larger
    image from its header, before decoding it (Pillow's own limit, ``Image.MAX_IMAGE_PIXELS``, only
    warns up to twice that)."""
    import io

    from PIL import Image, ImageOps

    path = Path(path) if data is None else path
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            if max_pixels and img.size[0] * img.size[1] > max_pixels:
                raise Image.DecompressionBombError(f"{img.size[0]}x{img.size[1]} pixels, over the limit of {max_pixels}")
            if min_side and img.format == "JPEG" and min(img.size) >= 2 * min_side:
                scale = min(img.size) / min_side
                img.draft(img.mode, (max(1, round(img.size[0] / scale)), max(1, round(img.size[1] / scale))))
            img.load()
            img = ImageOps.exif_transpose(img)
            return _normalise_mode(img)
    except FileNotFoundError:
        raise DataError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise DataError(f"{path}: is a directory, not an image") from None
    except Image.DecompressionBombError as exc:
        raise DataError(f"{path}: image too large, refused as a possible decompression bomb ({exc})") from None
    except (OSError, SyntaxError, ValueError) as exc:  # UnidentifiedImageError is an OSError
        reason = str(exc) or type(exc).__name__
        if isinstance(exc, Image.UnidentifiedImageError):  # its text names a path or a BytesIO object
            reason = "not an image format Pillow knows"
        if (not data) if data is not None else (path.stat().st_size == 0 if path.exists() else False):
            reason = "empty file"
        raise DataError(f"{path}: not a readable image ({reason})") from None


def _normalise_mode(img):
    from PIL import Image

    mode = img.mode
    if mode in ("L", "RGB"):
        return img.copy()
    if mode == "1":
        return img.convert("L")
    if mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
        # 16/32-bit grey: scale to 8 bits (convert("L") would clip everything above 255 to white)
        img = img.convert("I")
        lo, hi = img.getextrema()
        # I;16 is 16-bit by definition (a dark picture must stay dark); plain I: guess from the values
        top = 65535 if mode.startswith("I;16") or hi > 255 else 255
        return img.point(lambda v: v * (255.0 / top)).convert("L")
    if mode == "F":
        return img.convert("L")
    if mode == "P":
        img = img.convert("RGBA" if "transparency" in img.info else "RGB")
        mode = img.mode
    if mode in ("LA", "La", "PA", "RGBA", "RGBa"):
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        composed = Image.alpha_composite(background, rgba)
        return composed.convert("L" if mode in ("LA", "La") else "RGB")
    return img.convert("RGB")  # CMYK, YCbCr, LAB, HSV, ...

