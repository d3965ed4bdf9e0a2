"""predict decodes files with training's functions: the model sees the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import rgb_image, stripes, write

import fcndata.testing as t
from fcndata import predict
from fcndata.batching import keras_inputs
from fcndata.sources import from_folder

H, W = 13, 17


def _cases():
    rgb = rgb_image(H, W)
    gray = rgb[..., 0]
    rgba = np.concatenate([rgb, np.full((H, W, 1), 200, np.uint8)], -1)
    png16 = (t.random_image(H, W, 3, seed=3).astype(np.uint16) * 257 + 3)
    return {
        "png8": ("x.png", rgb),
        "png16": ("x.png", png16),
        "jpeg": ("x.jpg", rgb),
        "gray_to_rgb": ("x.png", gray),
        "rgba_to_rgb": ("x.png", rgba),
    }


@pytest.mark.parametrize("case", list(_cases()))
def test_predict_feeds_the_model_what_training_feeds_it(tmp_path, case):
    name, array = _cases()[case]
    (tmp_path / "images").mkdir()
    (tmp_path / "masks").mkdir()
    path = write(tmp_path / "images" / name, array)
    write(tmp_path / "masks" / "x.png", stripes(H, W))
    element = next(iter(from_folder("images/*", "masks/{stem}.png", channels=3, num_classes=3, root=str(tmp_path))))
    trained = keras_inputs({k: v[None] for k, v in element.items()})[0][0].numpy()
    served = predict.model_input(predict.read_image(path, 3))
    assert served.dtype == np.float32 and served.shape == (H, W, 3)
    np.testing.assert_array_equal(served, trained)


def test_unreadable_file_names_it(tmp_path):
    bad = tmp_path / "broken.png"
    bad.write_bytes(b"\x89PNG not really")
    with pytest.raises(ValueError, match=r"predict: image .*broken.png is truncated \(the PNG IEND chunk"):
        predict.read_image(bad, 3)
    garbage = tmp_path / "garbage.png"
    garbage.write_bytes(b"not an image at all")
    with pytest.raises(ValueError, match=r"predict: could not read or decode image .*garbage.png \(unreadable"):
        predict.read_image(garbage, 3)


def test_gray_alpha_converts_and_a_missing_file_is_named(tmp_path):
    import tensorflow as tf

    path = tmp_path / "two.png"
    path.write_bytes(tf.io.encode_png(tf.zeros([3, 4, 2], tf.uint8)).numpy())
    assert predict.read_image(path, 1).shape == (3, 4, 1)  # gray+alpha -> gray is supported
    with pytest.raises(ValueError, match="missing.png not found"):
        predict.read_image(tmp_path / "missing.png", 3)
