"""Detectron2's ``DatasetMapper``, reading frames with the package's one image reader.

Detectron2 reads training frames with its own ``read_image`` (Pillow, EXIF applied, 16-bit grey clipped to
white); prediction and evaluation read them with :func:`seizure_mlflow.data.frames.read_frame`. This mapper
makes training and validation read them the same way, and names the file when one cannot be read (a frame
changed or cut short after the checks), so that a failed run says which frame and what to do.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
from detectron2.data import DatasetMapper
from detectron2.data import transforms as T

from seizure_mlflow.data.frames import FrameError, read_frame


class FrameMapper(DatasetMapper):
    """``DatasetMapper`` for instance segmentation from image files (no semantic maps, no precomputed proposals).

    Expects each record's ``width``/``height`` to be the frame's size as shown (EXIF orientation applied), which
    :func:`seizure_mlflow.data.checks.check_coco` has checked before training starts.
    """

    def __call__(self, dataset_dict: dict) -> dict:
        dataset_dict = copy.deepcopy(dataset_dict)
        name = dataset_dict["file_name"]
        try:
            image = read_frame(name)
        except (FrameError, OSError) as exc:
            raise FrameError(f"a training frame could not be read during the run: {exc}. Check the file (it may "
                             "have changed since the run started), fix or remove it, and start again "
                             "(or --resume)") from None
        if (image.shape[1], image.shape[0]) != (dataset_dict["width"], dataset_dict["height"]):
            raise FrameError(f"{name} is {image.shape[1]}x{image.shape[0]}, but its record says "
                             f"{dataset_dict['width']}x{dataset_dict['height']}; it changed since the checks")
        aug_input = T.AugInput(image)
        transforms = self.augmentations(aug_input)
        image = aug_input.image
        dataset_dict["image"] = torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)))
        if not self.is_train:
            dataset_dict.pop("annotations", None)
            return dataset_dict
        if "annotations" in dataset_dict:
            self._transform_annotations(dataset_dict, transforms, image.shape[:2])
        return dataset_dict
