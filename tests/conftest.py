"""Shared fixtures: tiny image/mask folders written in every format the folder source reads."""

from __future__ import annotations

import os
import struct

import cv2
import numpy as np
import pytest
from hypothesis import settings

import fcndata.testing as t

# The suite draws the same examples on every machine and every clone: derandomized, no example
# database. A property test that fails, fails every time (an unlucky draw cannot turn CI red on
# an unrelated change); HYPOTHESIS_PROFILE=explore draws new examples when you look for bugs.
settings.register_profile("suite", derandomize=True, database=None, print_blob=True)
settings.register_profile("explore", database=None, max_examples=200)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "suite"))


H, W = 13, 17  # odd, non-square, tiny


def rgb_image(h=H, w=W, seed=0) -> np.ndarray:
    return t.random_image(h, w, 3, seed)


def stripes(h=H, w=W, num_classes=3) -> np.ndarray:
    return t.stripe_label(h, w, num_classes).numpy()


def write(path, array) -> str:
    """Writes an RGB(A)/gray array with OpenCV (which wants BGR)."""
    path = str(path)
    arr = np.asarray(array)
    if arr.ndim == 3 and arr.shape[-1] in (3, 4):
        arr = arr[..., [2, 1, 0, 3][: arr.shape[-1]]]
    assert cv2.imwrite(path, arr), path
    return path


def write_raw_tiff(path, array: np.ndarray) -> str:
    """A minimal uncompressed uint8 TIFF with any number of samples per pixel (OpenCV writes 1, 3, 4)."""
    h, w, c = array.shape
    data = np.ascontiguousarray(array, np.uint8).tobytes()
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, c, None), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, None), (277, 3, 1, c), (278, 4, 1, h), (279, 4, 1, len(data)), (284, 3, 1, 1)]
    ifd_size = 2 + 12 * len(entries) + 4
    bits_offset = 8 + ifd_size
    data_offset = bits_offset + 2 * c
    out = bytearray(b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries)))
    for tag, typ, count, value in entries:
        if tag == 258:
            value = bits_offset if c > 2 else 8 | (8 << 16 if c == 2 else 0)
        if tag == 273:
            value = data_offset
        out += struct.pack("<HHII", tag, typ, count, value) if typ == 4 or tag == 258 else struct.pack("<HHIHH", tag, typ, count, value, 0)
    out += struct.pack("<I", 0) + struct.pack(f"<{c}H", *([8] * c)) + data
    with open(path, "wb") as f:
        f.write(bytes(out))
    return str(path)


@pytest.fixture
def folder(tmp_path):
    """images/{a,b,c}.png (RGB, sizes differ) with masks/{stem}.png stripe labels (3 classes)."""
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    for i, (stem, (h, w)) in enumerate(zip("abc", [(H, W), (11, 9), (15, 12)])):
        write(tmp_path / "images" / f"{stem}.png", rgb_image(h, w, seed=i))
        write(tmp_path / "masks" / f"{stem}.png", stripes(h, w))
    return tmp_path


@pytest.fixture(scope="module")
def untrained_run(tmp_path_factory):
    """A run folder as ``fcndata.train`` writes it (config.yaml, model.keras): untrained, 3 classes."""
    from fcndata.config import dump_config, load_config
    from fcndata.models import model_from_config

    run = tmp_path_factory.mktemp("run")
    cfg = load_config(None, ["data.num_classes=3", "model.width=4", "model.variant=fcn32s"])
    model_from_config(cfg.model, cfg.data).save(run / "model.keras")
    dump_config(cfg, run / "config.yaml")
    return run
