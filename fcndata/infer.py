"""Sliding-window and whole-image prediction over images of any size.

The predictor uses the patch engine's geometry: the same grid origins that
``ExtractPatches`` cuts for training (``border="shift"``: full coverage, no padding
inside the image) and the same ``Stitcher`` blends the overlapping predictions back.
Without a patch size the whole image is padded to a multiple of 32 (roi 0 on the
padding) and the prediction cropped back.

Example:
  >>> import keras, numpy as np
  >>> inp = keras.Input((None, None, 3))
  >>> identity = keras.Model(inp, inp)                    # "class scores" = the pixels
  >>> image = np.random.default_rng(0).random((37, 53, 3)).astype("float32")
  >>> out = SlidingWindowPredictor(identity, patch_size=16, stride=8, pad_to_multiple=1).predict(image)
  >>> bool(np.allclose(out, image, atol=1e-6))
  True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np
import tensorflow as tf


def to_model_input(image: np.ndarray) -> np.ndarray:
    """Scales pixels as ``to_keras`` does: uint8 / 255, uint16 / 65535, float unchanged."""
    image = np.asarray(image)
    if image.dtype == np.uint8:
        return image.astype(np.float32) / 255.0
    if image.dtype == np.uint16:
        return image.astype(np.float32) / 65535.0
    return image.astype(np.float32)


def _pad_to(x: np.ndarray, height: int, width: int) -> np.ndarray:
    pad = [(0, height - x.shape[0]), (0, width - x.shape[1])] + [(0, 0)] * (x.ndim - 2)
    return np.pad(x, pad)


@dataclass
class SlidingWindowPredictor:
    """Predicts class probabilities for images of any size.

    Args:
      model: a Keras model returning logits ``[B, H, W, K]`` (or any per-pixel output).
      patch_size: (height, width) or int; None predicts whole images.
      stride: (height, width) or int; default half the patch size.
      blend: ``average``, ``gaussian`` (σ = patch/8), ``hann`` or ``crop``.
      batch_size: patches per model call.
      flip_tta: also predict the horizontally flipped image and average.
      masked: the model takes ``{"image", "roi"}`` (``model.masked: true``); detected
        from the model's inputs when None.
      pad_to_multiple: patch / image sizes the model needs (32 for FCN-8s).
      softmax: turn logits into probabilities before blending (identity-free models only).
    """

    model: object
    patch_size: Optional[object] = None
    stride: Optional[object] = None
    blend: str = "gaussian"
    batch_size: int = 8
    flip_tta: bool = False
    masked: Optional[bool] = None
    pad_to_multiple: int = 32
    softmax: bool = False

    def __post_init__(self):
        if self.patch_size is not None:
            self.patch_size = _pair(self.patch_size, "patch_size")
            self.stride = _pair(self.stride if self.stride is not None else tuple(max(1, n // 2) for n in self.patch_size), "stride")
            bad = [n for n in self.patch_size if n % self.pad_to_multiple]
            if bad:
                raise ValueError(
                    f"SlidingWindowPredictor: patch_size must be a multiple of {self.pad_to_multiple} for this model "
                    f"(its skip connections need it). Received: patch_size={self.patch_size}"
                )
        if self.masked is None:
            self.masked = isinstance(getattr(self.model, "input", None), dict) or len(getattr(self.model, "inputs", [1])) > 1

    def _call(self, batch: np.ndarray, roi: np.ndarray) -> np.ndarray:
        inputs = {"image": batch, "roi": roi[..., None]} if self.masked else batch
        out = self.model(inputs, training=False)
        out = tf.cast(out, tf.float32)
        if self.softmax:
            out = tf.nn.softmax(out, axis=-1)
        return out.numpy()

    def _forward(self, batch: np.ndarray, roi: np.ndarray) -> np.ndarray:
        out = self._call(batch, roi)
        if self.flip_tta:
            flipped = self._call(batch[:, :, ::-1].copy(), roi[:, :, ::-1].copy())
            out = 0.5 * (out + flipped[:, :, ::-1])
        return out

    def predict(self, image: np.ndarray) -> np.ndarray:
        """Per-pixel model output ``[H, W, K]`` (float32) for one image ``[H, W, C]``."""
        x = to_model_input(image)
        if x.ndim == 2:
            x = x[..., None]
        h, w = x.shape[:2]
        if self.patch_size is None:
            m = self.pad_to_multiple
            ph, pw = -(-h // m) * m, -(-w // m) * m
            roi = _pad_to(np.ones((h, w), np.float32), ph, pw)
            return self._forward(_pad_to(x, ph, pw)[None], roi[None])[0, :h, :w]
        return self._sliding(x)

    def _sliding(self, x: np.ndarray) -> np.ndarray:
        from fcndata.patches import Stitcher, grid_origins

        (nh, nw), (sh, sw) = self.patch_size, self.stride
        h, w = x.shape[:2]
        # An image smaller than the patch is padded (roi 0) so the grid has one patch.
        H, W = max(h, nh), max(w, nw)
        padded = _pad_to(x, H, W)
        roi = _pad_to(np.ones((h, w), np.float32), H, W)
        origins = [(y, xx) for y in grid_origins(H, nh, sh, "shift") for xx in grid_origins(W, nw, sw, "shift")]
        stitcher = None
        for start in range(0, len(origins), self.batch_size):
            chunk = origins[start : start + self.batch_size]
            batch = np.stack([padded[y : y + nh, xx : xx + nw] for y, xx in chunk])
            rois = np.stack([roi[y : y + nh, xx : xx + nw] for y, xx in chunk])
            out = self._forward(batch, rois)
            if stitcher is None:
                stitcher = Stitcher((H, W), (nh, nw), out.shape[-1], self.blend)
            stitcher.add(out, np.asarray(chunk, np.int32))
        return np.asarray(stitcher.result())[:h, :w]

    def predict_labels(self, image: np.ndarray) -> np.ndarray:
        """Class ids ``[H, W]`` (uint8 when they fit) for one image."""
        labels = np.argmax(self.predict(image), axis=-1)
        return labels.astype(np.uint8 if labels.max(initial=0) < 256 else np.int32)


def _pair(value, name):
    if isinstance(value, (int, np.integer)):
        value = (int(value), int(value))
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) < 1:
        raise ValueError(f"SlidingWindowPredictor: {name} must be a positive int or (height, width). Received: {name}={value}")
    return value


def predictor_from_config(model, cfg, masked: bool | None = None) -> SlidingWindowPredictor:
    """A predictor from a ``predict:`` section (:class:`fcndata.config.PredictConfig`)."""
    return SlidingWindowPredictor(
        model,
        patch_size=cfg.patch_size,
        stride=cfg.stride,
        blend=cfg.blend,
        batch_size=cfg.batch_size,
        flip_tta=cfg.flip_tta,
        masked=masked,
    )
