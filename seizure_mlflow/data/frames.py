"""The one image reader: training, validation, evaluation, prediction and the checks read frames here.

A frame is read the same way everywhere, so that the model sees in serving the pixels it was trained on:

* **Orientation**: a JPEG's (or WebP's) EXIF orientation is applied (as phones, browsers and annotation tools show the
  photo); the frame's size is the size after it, and that is the size a COCO record must state.
* **Bit depth and channels**: 8-bit colour as it is; grey frames become three equal channels; 16-bit grey
  (``I;16``, medical and thermal cameras) is scaled to 8 bits by its top byte, never clipped to white; an
  alpha channel is dropped; palette frames are expanded.
* **Size**: at most :data:`MAX_PIXELS` pixels; a larger frame is refused with its size, not decoded.

:func:`read_header` reads only the header and the file's last bytes: format, oriented size, and whether the
file ends as its format requires (a truncated JPEG or PNG is found without decoding it). :func:`read_frame`
decodes to a BGR ``uint8`` array (OpenCV's and Detectron2's order). Part of a registered model's code: imports
nothing of the package but its errors.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings
from dataclasses import dataclass

import numpy as np
from PIL import Image, UnidentifiedImageError

from seizure_mlflow.errors import UserError

MAX_PIXELS = 50_000_000  # an 8K frame is 33 Mpx
READABLE_FORMATS = {"PNG", "JPEG", "BMP", "TIFF", "WEBP", "PPM"}
_SWAPPING_ORIENTATIONS = {5, 6, 7, 8}  # EXIF orientations that turn the image by 90 degrees
_EXIF_ORIENTATION = 0x0112
_PNG_END = b"IEND\xaeB`\x82"
_JPEG_END = b"\xff\xd9"
_TAIL_BYTES = 4096


class FrameError(UserError):
    """A frame that cannot be used: not an image, cut short, too large, or in a pixel format we do not read."""

    def __init__(self, message: str, *, param: str | None = None) -> None:
        if "\nOriginal Traceback" in message:  # re-raised by a DataLoader worker: our message, not its traceback
            message = message.rstrip().rsplit(f"{type(self).__name__}: ", 1)[-1]
        super().__init__(message, param=param)


@dataclass(frozen=True)
class FrameHeader:
    """What a frame's header says: ``width``/``height`` as the frame is shown (after its EXIF orientation)."""

    format: str
    width: int
    height: int
    orientation: int = 1
    mode: str = "RGB"

    @property
    def turned(self) -> bool:
        """Whether the EXIF orientation swaps the stored width and height."""
        return self.orientation in _SWAPPING_ORIENTATIONS


def _open(source: str | os.PathLike | bytes | io.IOBase, where: str) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except Image.DecompressionBombError as exc:
        raise FrameError(f"{where}: {exc}; frames are limited to {MAX_PIXELS:,} pixels, downscale it") from None
    except UnidentifiedImageError:
        raise FrameError(f"{where}: not a readable image (its bytes are no PNG, JPEG, BMP, TIFF, WebP or PPM)") from None
    except (OSError, ValueError, SyntaxError) as exc:
        raise FrameError(f"{where}: not a readable image ({exc})") from None
    if image.format not in READABLE_FORMATS:
        image.close()
        raise FrameError(f"{where}: format {image.format} is not one we read (PNG, JPEG, BMP, TIFF, WEBP, PPM)")
    if image.width * image.height > MAX_PIXELS:
        image.close()
        raise FrameError(f"{where}: {image.width}x{image.height} is {image.width * image.height:,} pixels, above the "
                         f"limit of {MAX_PIXELS:,}; downscale it")
    return image


_TRANSPOSE = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
              5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
              8: Image.Transpose.ROTATE_90}  # EXIF orientation -> the turn that shows the image upright


def _orientation(image: Image.Image) -> int:
    """The EXIF orientation (1-8) of a JPEG or WebP, read from its header. Other formats are taken as stored: PNG's
    EXIF chunk may follow the pixel data (reading it means reading the whole file), and Pillow already turns some
    TIFFs itself; phones and cameras write the tag in JPEG."""
    if image.format not in ("JPEG", "WEBP"):
        return 1
    try:
        value = image.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, ValueError, SyntaxError):
        return 1
    return value if isinstance(value, int) and 1 <= value <= 8 else 1


def _ends_complete(tail: bytes, image_format: str) -> bool:
    """Whether a file's last bytes are how its format ends (JPEG's end-of-image marker, PNG's IEND chunk)."""
    tail = tail.rstrip(b"\x00")
    if image_format == "PNG":
        return tail.endswith(_PNG_END)
    if image_format == "JPEG":
        return _JPEG_END in tail[-64:]
    return True


def read_header(source: str | os.PathLike | bytes, where: str | None = None) -> FrameHeader:
    """A frame's :class:`FrameHeader`, from its header and last bytes only; :class:`FrameError` if it is unusable."""
    where = where or str(source)[:200]
    with (contextlib.nullcontext(io.BytesIO(source)) if isinstance(source, bytes) else open(source, "rb")) as file:
        with _open(file, where) as image:
            orientation, (width, height) = _orientation(image), image.size
            header = FrameHeader(image.format, width, height, orientation, image.mode)
        file.seek(0, io.SEEK_END)
        file.seek(max(0, file.tell() - _TAIL_BYTES))
        tail = file.read()
    if not _ends_complete(tail, header.format):
        raise FrameError(f"{where}: the {header.format} file is cut short (it does not end as a {header.format} "
                         "file must); copy or extract the frame again")
    _check_mode(header.mode, where)
    return FrameHeader(header.format, height, width, orientation, header.mode) if header.turned else header


def _check_mode(mode: str, where: str) -> None:
    if mode in ("F", "I;16S", "I;32S") or mode.startswith("BGR;"):
        raise FrameError(f"{where}: pixel format {mode} is not one we read; save it as 8-bit or 16-bit PNG")


def read_frame(source: str | os.PathLike | bytes, where: str | None = None) -> np.ndarray:
    """A frame as an ``H x W x 3`` BGR ``uint8`` array, read by the rules in this module's docstring."""
    where = where or str(source)[:200]
    with _open(source, where) as image:
        _check_mode(image.mode, where)
        orientation = _orientation(image)
        try:
            image.load()
            return _to_bgr(image.transpose(_TRANSPOSE[orientation]) if orientation in _TRANSPOSE else image)
        except (OSError, ValueError, SyntaxError) as exc:
            raise FrameError(f"{where}: could not decode the frame ({exc}); copy or extract it again") from None


def _to_bgr(image: Image.Image) -> np.ndarray:
    if image.mode.startswith("I"):
        grey = np.asarray(image).astype(np.uint32)
        grey = (np.minimum(grey, 65535) >> 8).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[:, :, ::-1])
