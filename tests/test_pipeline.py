"""build_pipeline: the recipes in pipelines/ run end to end, deterministically."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

from fcndata import elements as E
from fcndata.config import load_config
from fcndata.pipeline import build_pipeline, steps_per_epoch

ROOT = Path(__file__).resolve().parent.parent
SHAPES = ["data.source=shapes", "data.num_classes=4", "data.channels=3", "data.num_images=6",
          "data.val_num_images=3", "data.min_size=40", "data.max_size=70"]


def _cfg(recipe="shapes_patchwise.yaml", *extra):
    return load_config(ROOT / "pipelines" / recipe, SHAPES + list(extra))


def _batches(ds, n):
    return [tf.nest.map_structure(lambda t: t.numpy(), b) for b in ds.take(n)]


def test_fullimage_batches_are_padded_to_multiples_with_roi():
    cfg = _cfg("brain_fullimage.yaml", "batching.batch_size=3", "batching.bucket_by=none",
               "augment.rotate=0.0", "augment.scale=null")
    batch = next(iter(build_pipeline(cfg, "train", keras=False, epochs=1)))
    E.check_spec({k: tf.TensorSpec.from_tensor(v) for k, v in batch.items()}, batched=True)
    h, w = batch["image"].shape[1:3]
    assert h % 32 == 0 and w % 32 == 0
    for i in range(batch["image"].shape[0]):
        sh, sw = batch["source_shape"][i].numpy()
        assert np.all(batch["roi"][i, sh:, :].numpy() == 0) and np.all(batch["roi"][i, :, sw:].numpy() == 0)
        assert np.all(batch["label"][i, sh:, :].numpy() == 255)


def test_keras_triplets_from_patchwise_recipe():
    cfg = _cfg("shapes_patchwise.yaml", "batching.batch_size=8")
    inputs, label, weight = next(iter(build_pipeline(cfg, "train", epochs=1)))
    assert inputs.shape == (8, 32, 32, 3) and inputs.dtype == tf.float32
    assert float(tf.reduce_max(inputs)) <= 1.0
    assert label.dtype == tf.int32 and weight.dtype == tf.float32


def test_same_seed_same_batches_and_epochs_differ():
    cfg = _cfg("shapes_patchwise.yaml", "batching.batch_size=8")
    a = _batches(build_pipeline(cfg, "train", epochs=2), 6)
    b = _batches(build_pipeline(cfg, "train", epochs=2), 6)
    for x, y in zip(a, b):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y)):
            np.testing.assert_array_equal(u, v)


def test_resumed_stream_continues_where_it_was():
    cfg = _cfg("brain_fullimage.yaml", "batching.batch_size=2")
    n = steps_per_epoch(cfg)
    full = _batches(build_pipeline(cfg, "train", keras=False, epochs=3), 3 * n)
    resumed = _batches(build_pipeline(cfg, "train", keras=False, initial_epoch=1, epochs=2), 2 * n)
    for x, y in zip(full[n:], resumed):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["label"], y["label"])
        assert x["epoch"][0] == y["epoch"][0]
    # the second epoch is not a copy of the first: augmentation and order are keyed by epoch
    assert not all(np.array_equal(x["image"], y["image"]) for x, y in zip(full[:n], full[n:2 * n]))


def test_eval_mode_is_one_pass_without_augmentation():
    cfg = _cfg("brain_fullimage.yaml", "batching.batch_size=2")
    ds = build_pipeline(cfg, "eval", keras=False)
    sizes = [int(b["image"].shape[0]) for b in ds]
    assert sum(sizes) == 3
    again = [int(b["image"].shape[0]) for b in ds]
    assert sizes == again


def test_bad_mode_is_rejected():
    with pytest.raises(ValueError, match="mode must be one of"):
        build_pipeline(_cfg(), "training")
