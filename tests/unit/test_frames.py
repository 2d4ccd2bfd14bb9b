"""The one image reader: frames that broke training or were read differently in training and serving.

Each legitimate frame (EXIF-rotated, 16-bit grey) must reach the model as the same pixels through training's
mapper, prediction's decoder and the checks' size; each broken one (cut short, too large) is refused with its
name before any work, and through the mapper (a frame changed during a run) with a message, not a traceback.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image as detectron2_read_image
from PIL import Image

from seizure_mlflow.data.checks import check_image_headers
from seizure_mlflow.data.frames import FrameError, read_frame, read_header
from seizure_mlflow.data.mapper import FrameMapper
from seizure_mlflow.inference.predictor import decode_image

WIDTH, HEIGHT = 24, 16


def _picture() -> np.ndarray:
    """An RGB picture whose every pixel differs, so that a rotation or a flip cannot go unseen."""
    y, x = np.mgrid[0:HEIGHT, 0:WIDTH]
    return np.stack([x * 10, y * 15, (x + y) * 3], axis=2).astype(np.uint8)


def _exif_rotated_jpeg(path: Path) -> np.ndarray:
    """A JPEG whose stored pixels are the picture turned 90 degrees, tagged orientation 6 so that it is shown
    upright (as phones write them); returns the upright picture as shown (what a reader must give)."""
    upright = Image.fromarray(_picture())
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    exif = Image.Exif()
    exif[0x0112] = 6
    stored.save(path, quality=100, exif=exif.tobytes(), subsampling=0)
    with Image.open(path) as image:
        from PIL import ImageOps

        return np.asarray(ImageOps.exif_transpose(image).convert("RGB"))


def _mapper_image(path: Path, width: int, height: int) -> np.ndarray:
    cfg = get_cfg()
    cfg.INPUT.MIN_SIZE_TRAIN = (min(width, height),)
    cfg.INPUT.MAX_SIZE_TRAIN = max(width, height)
    cfg.INPUT.RANDOM_FLIP = "none"
    mapper = FrameMapper(cfg, is_train=True)
    record = {"file_name": str(path), "width": width, "height": height, "image_id": 1, "annotations": []}
    return mapper(record)["image"].permute(1, 2, 0).numpy()  # BGR, as the model gets it


def test_an_exif_rotated_photo_is_read_upright_by_training_prediction_and_the_checks(tmp_path):
    path = tmp_path / "phone.jpg"
    upright_rgb = _exif_rotated_jpeg(path)
    assert upright_rgb.shape[:2] == (HEIGHT, WIDTH)
    header = read_header(path)
    assert (header.width, header.height, header.orientation) == (WIDTH, HEIGHT, 6)
    training = _mapper_image(path, WIDTH, HEIGHT)
    serving = decode_image(path.read_bytes())
    assert np.array_equal(training, serving)
    assert np.array_equal(serving[:, :, ::-1], upright_rgb)
    assert check_image_headers([("images[0]", str(path), (WIDTH, HEIGHT))]) == []
    stored_size = check_image_headers([("images[0]", str(path), (HEIGHT, WIDTH))])
    assert len(stored_size) == 1 and "EXIF orientation (6)" in stored_size[0] and "exiftool" in stored_size[0]


def test_a_16_bit_grey_frame_is_read_as_its_top_byte_everywhere_not_as_white(tmp_path):
    path = tmp_path / "thermal.png"
    levels = (np.arange(WIDTH * HEIGHT, dtype=np.uint32).reshape(HEIGHT, WIDTH) * 170).astype(np.uint16)
    Image.fromarray(levels).save(path)
    with Image.open(path) as image:
        assert image.mode.startswith("I;16")
    expected = np.repeat((levels >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    training = _mapper_image(path, WIDTH, HEIGHT)
    assert np.array_equal(training, expected)
    assert np.array_equal(decode_image(path.read_bytes()), expected)
    assert np.array_equal(read_frame(path), expected)
    # What Detectron2's own reader gives: clipped to 255 nearly everywhere (the train/serve skew this removes).
    assert (detectron2_read_image(str(path), format="BGR") == 255).mean() > 0.9


@pytest.mark.parametrize("kind", ["PNG", "JPEG"])
def test_a_frame_cut_short_is_refused_from_its_last_bytes(tmp_path, kind):
    path = tmp_path / f"frame.{kind.lower()}"
    buffer = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buffer, kind)
    data = buffer.getvalue()
    path.write_bytes(data[: len(data) * 2 // 3])
    problems = check_image_headers([("images[4] (id 9)", str(path), (64, 64))])
    assert len(problems) == 1 and problems[0].startswith("images[4] (id 9): ") and "cut short" in problems[0]
    with pytest.raises(FrameError, match="cut short"):
        decode_image(path.read_bytes(), where="row 0")
    path.write_bytes(data)
    assert check_image_headers([("images[4] (id 9)", str(path), (64, 64))]) == []


def _png_header_only(width: int, height: int) -> bytes:
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


@pytest.mark.parametrize("side", [8000, 20000])
def test_a_frame_above_the_pixel_limit_is_refused_with_its_size_and_never_decoded(tmp_path, side):
    path = tmp_path / "huge.png"
    path.write_bytes(_png_header_only(side, side))
    problems = check_image_headers([("images[0] (id 1)", str(path), (side, side))])
    assert len(problems) == 1 and "limit" in problems[0] and "downscale" in problems[0], problems
    with pytest.raises(FrameError, match="downscale"):
        read_frame(path)


def test_a_frame_broken_during_a_run_fails_with_its_name_through_a_loader_worker(tmp_path):
    """The loader's worker re-raises the mapper's error in the training process: the message is the frame's,
    without the worker's traceback (the command prints it and the run ends FAILED)."""
    path = tmp_path / "frame.png"
    Image.fromarray(_picture()).save(path)
    path.write_bytes(path.read_bytes()[:40])
    cfg = get_cfg()
    mapper = FrameMapper(cfg, is_train=True)
    records = [{"file_name": str(path), "width": WIDTH, "height": HEIGHT, "image_id": 1, "annotations": []}]
    loader = torch.utils.data.DataLoader(records, batch_size=1, num_workers=1, collate_fn=lambda b: [mapper(r) for r in b])
    with pytest.raises(FrameError) as err:
        next(iter(loader))
    message = str(err.value)
    assert str(path) in message and "could not be read during the run" in message
    assert "Traceback" not in message
