"""The plain Keras U-Net a user writes in 40 lines, fed the simplest way: the reference line.

Issue 13's baseline: 3 levels 16/32/64 + a 128 bottleneck, two 3x3 convs + ReLU per level,
concatenated skips, every image and label of a split loaded into numpy and zero-padded to
one fixed size (labels padded with the ignore label), sparse cross-entropy with
``ignore_class``, Adam 1e-3, no augmentation. ``benchmarks/baseline_unet.py`` and the
experiments (``fcndata.experiments``) both train it from here.

Example:
  >>> from fcndata.config import load_config
  >>> cfg = load_config("pipelines/shapes.yaml", ["data.num_images=2", "data.min_size=32", "data.max_size=40"])
  >>> x, y, size = load_arrays(cfg, "train")
  >>> x.dtype.name, y.dtype.name, size[0] % 8
  ('float32', 'uint8', 0)
  >>> model = compiled_unet(cfg.data.num_classes, x.shape[-1])
  >>> model.output_shape
  (None, None, None, 4)
"""

from __future__ import annotations

import numpy as np

IGNORE = 255  # the label of padding in the arrays (the loss's ignore_class)


def unet(num_classes: int, channels: int):
    """The issue's plain U-Net: 3 levels 16/32/64 + 128 bottleneck, concat skips, logits out."""
    import keras
    from keras import layers

    def block(x, c):
        x = layers.Conv2D(c, 3, padding="same", activation="relu")(x)
        return layers.Conv2D(c, 3, padding="same", activation="relu")(x)

    inputs = keras.Input((None, None, channels))
    skips, x = [], inputs
    for c in (16, 32, 64):
        x = block(x, c)
        skips.append(x)
        x = layers.MaxPooling2D()(x)
    x = block(x, 128)
    for c, skip in zip((64, 32, 16), reversed(skips)):
        x = layers.Conv2DTranspose(c, 2, strides=2, padding="same")(x)
        x = block(layers.Concatenate()([x, skip]), c)
    return keras.Model(inputs, layers.Conv2D(num_classes, 1)(x))


def compiled_unet(num_classes: int, channels: int, learning_rate: float = 1e-3):
    """:func:`unet` compiled as the user would: Adam, sparse cross-entropy ignoring padding."""
    import keras

    model = unet(num_classes, channels)
    model.compile(
        keras.optimizers.Adam(learning_rate),
        keras.losses.SparseCategoricalCrossentropy(from_logits=True, ignore_class=IGNORE),
    )
    return model


def load_arrays(config, split: str, size=None):
    """One split of the recipe's data as numpy, zero-padded to one size.

    Returns:
      ``(images, labels, size)``: images float32 [N, H, W, C] in [0, 1] (as fcndata's
      ``to_keras`` scales them), labels uint8 [N, H, W] with :data:`IGNORE` on padding,
      and (H, W): ``size`` if given, else the largest image rounded up to a multiple of 8
      (the U-Net pools three times).
    """
    from fcndata import sources

    images, labels = [], []
    for e in sources.load_source(config.data, split).as_numpy_iterator():
        images.append(e["image"])
        labels.append(e["label"])
    if size is None:
        size = tuple(int(-(-max(a.shape[i] for a in images) // 8) * 8) for i in (0, 1))
    x = np.zeros((len(images), *size, images[0].shape[-1]), np.float32)
    y = np.full((len(images), *size), IGNORE, np.uint8)
    for i, (im, lab) in enumerate(zip(images, labels)):
        h, w = lab.shape
        scale = np.iinfo(im.dtype).max if np.issubdtype(im.dtype, np.integer) else 1.0
        x[i, :h, :w] = im.astype(np.float32) / scale
        y[i, :h, :w] = lab
    return x, y, size


def array_batches(x: np.ndarray, y: np.ndarray, batch_size: int, seed: int):
    """Endless ``(images, labels)`` batches: a new seeded permutation every epoch, as
    ``model.fit(x, y, shuffle=True)`` draws them (the last batch of an epoch may be short)."""
    rng = np.random.default_rng(seed)
    while True:
        order = rng.permutation(len(x))
        for i in range(0, len(x), batch_size):
            index = np.sort(order[i : i + batch_size])
            yield x[index], y[index]
