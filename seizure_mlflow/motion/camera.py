"""The camera's own motion between two frames, read off the background, so that it can be removed before the
patient's motion is measured.

A camera that is bumped, vibrates or pans moves the whole image, the patient with it: the flow on the patient
then oscillates at the camera's rate, and a shake at 2-6 Hz reads as clonic movement. The background (the frame
minus every person's mask, widened) moves only with the camera. Corners of the background of the earlier frame
(Shi-Tomasi) are followed into the later one (pyramidal Lucas-Kanade), and a similarity transform (rotation,
scale, translation) is fitted to them robustly (RANSAC, OpenCV's ``estimateAffinePartial2D``): that is the
camera's motion. The later frame (and its masks) is then warped back by it (:func:`stabilize`) before the
dense flow is computed, so that nothing of the camera's motion is left, in textured and in flat parts of the
image alike: subtracting the fitted motion from the dense flow instead would leave it, reversed, wherever the
image is flat (where dense flow sees no motion to begin with).

A frame whose background cannot be fitted (less than ``MIN_BACKGROUND`` of the frame visible, fewer than
``MIN_POINTS`` corners followed, or fewer than ``MIN_INLIERS`` of them agreeing with one transform: a scene
change, a caregiver filling the view) is marked ``fitted = False`` and left as it is: its motion is not guessed.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MIN_BACKGROUND = 0.15  # of the frame's pixels
MIN_POINTS = 6
MIN_INLIERS = 0.5
MAX_CORNERS = 200
INLIER_PX = 0.75  # px at the analysis size: a followed corner agrees with the transform within this


@dataclass(frozen=True)
class CameraFit:
    """``dx``, ``dy``: the camera's motion at the frame's centre (px/frame at the analysis size); ``inliers``: the
    share of the followed background corners that agree with it; ``fitted``: whether it is removed;
    ``transform``: the 2x3 similarity from the earlier frame to the later one (None when not fitted); ``unfitted``:
    why not (``background``: too little of it visible; ``corners``: too few corners to follow, a featureless
    background; ``inliers``: the corners disagree, a scene change)."""

    dx: float
    dy: float
    inliers: float
    fitted: bool
    transform: np.ndarray | None = None
    unfitted_by: str = ""

    @staticmethod
    def unfitted(why: str, inliers: float = np.nan) -> "CameraFit":
        return CameraFit(np.nan, np.nan, inliers, False, unfitted_by=why)


def fit_camera(previous: np.ndarray, current: np.ndarray, background: np.ndarray) -> CameraFit:
    """The camera's motion from the grey frame ``previous`` to ``current``, on the pixels where ``background``
    is True (in either frame)."""
    height, width = background.shape
    if np.count_nonzero(background) < MIN_BACKGROUND * height * width:
        return CameraFit.unfitted("background")
    previous, current = (cv2.GaussianBlur(g, (5, 5), 1.0) for g in (previous, current))  # no corners in noise
    corners = cv2.goodFeaturesToTrack(previous, MAX_CORNERS, qualityLevel=0.02, minDistance=3,
                                      mask=background.astype(np.uint8), blockSize=5)
    if corners is None or len(corners) < MIN_POINTS:
        return CameraFit.unfitted("corners")
    followed, status, _ = cv2.calcOpticalFlowPyrLK(previous, current, corners, None, winSize=(15, 15), maxLevel=2)
    good = status.ravel() == 1
    if good.sum() < MIN_POINTS:
        return CameraFit.unfitted("corners")
    source, target = corners[good].reshape(-1, 2), followed[good].reshape(-1, 2)
    transform, inlier_mask = cv2.estimateAffinePartial2D(source, target, method=cv2.RANSAC,
                                                         ransacReprojThreshold=INLIER_PX, maxIters=500,
                                                         confidence=0.995, refineIters=10)
    if transform is None:
        return CameraFit.unfitted("inliers")
    inliers = float(np.mean(inlier_mask))
    if inliers < MIN_INLIERS:
        return CameraFit.unfitted("inliers", inliers)
    centre = np.array([width / 2, height / 2, 1.0])
    dx, dy = transform @ centre - centre[:2]
    return CameraFit(float(dx), float(dy), inliers, True, transform)


def stabilize(image: np.ndarray, fit: CameraFit, nearest: bool = False) -> np.ndarray:
    """The later frame (or a mask of it, with ``nearest``) warped back into the earlier frame's place."""
    if not fit.fitted:
        return image
    height, width = image.shape[:2]
    back = cv2.invertAffineTransform(fit.transform)
    if nearest:
        return cv2.warpAffine(image.astype(np.uint8), back, (width, height), flags=cv2.INTER_NEAREST,
                              borderMode=cv2.BORDER_CONSTANT, borderValue=0).astype(bool)
    return cv2.warpAffine(image, back, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)
