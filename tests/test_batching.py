"""Tests for fcndata.batching: dynamic padding, bucketing, padded fraction, Keras inputs."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from hypothesis import given, settings
from hypothesis import strategies as st

import fcndata.testing as t
from fcndata import elements as E
from fcndata.batching import (
    BucketBySize,
    PadAndBatch,
    Shuffle,
    batching_from_config,
    derive_boundaries,
    keras_inputs,
    pad_to_multiple,
    padded_fraction,
    to_keras,
)
from fcndata.config import BatchingConfig, DataConfig

MIXED = ((37, 53), (29, 41), (64, 31), (17, 17), (45, 23))


def round_up(n, m):
    return -(-n // m) * m


def check_padded_batch(batch, sizes, multiple, ignore_label=255):
    """Every element: real pixels unchanged, padding image 0 / label ignore / roi 0."""
    _, height, width = batch["label"].shape
    assert height % multiple == 0 and width % multiple == 0
    assert height == round_up(max(h for h, _ in sizes), multiple)
    assert width == round_up(max(w for _, w in sizes), multiple)
    image, label, roi = (batch[k].numpy() for k in ("image", "label", "roi"))
    for i, (h, w) in enumerate(sizes):
        np.testing.assert_array_equal(image[i, :h, :w], t.coordinate_image(h, w).numpy())
        np.testing.assert_array_equal(label[i, :h, :w], t.stripe_label(h, w).numpy())
        real = np.zeros([height, width], bool)
        real[:h, :w] = True
        np.testing.assert_array_equal(roi[i], real.astype(np.uint8))
        assert np.all(image[i][~real] == 0)
        assert np.all(label[i][~real] == ignore_label)
        np.testing.assert_array_equal(batch["source_shape"][i].numpy(), [h, w])
        np.testing.assert_array_equal(batch["origin"][i].numpy(), [0, 0])
        assert batch["path"][i].numpy().decode() == f"testing/{h}x{w}#{i}"


# ---------------------------------------------------------------------------- PadAndBatch


def test_pad_and_batch_mixed_sizes():
    ds = t.dataset(MIXED).apply(PadAndBatch(len(MIXED)))
    (batch,) = list(ds)
    assert batch["image"].shape.as_list() == [5, 64, 64, 3]
    check_padded_batch(batch, MIXED, 32)


def test_pad_and_batch_element_spec_and_remainder():
    ds = t.dataset(MIXED).apply(PadAndBatch(2))
    E.check_spec(ds, batched=True)
    assert ds.element_spec["image"].shape.as_list() == [None, None, None, 3]
    assert [b["label"].shape[0] for b in ds] == [2, 2, 1]
    dropped = t.dataset(MIXED).apply(PadAndBatch(2, drop_remainder=True))
    assert dropped.element_spec["roi"].shape.as_list() == [2, None, None]
    assert len(list(dropped)) == 2


def test_pad_and_batch_keeps_static_patch_shapes_and_optional_keys():
    def patch(e):
        return {
            **e,
            "image": tf.ensure_shape(e["image"][:40, :40], [40, 40, 3]),
            "label": tf.ensure_shape(e["label"][:40, :40], [40, 40]),
            "roi": tf.ensure_shape(e["roi"][:40, :40], [40, 40]),
            "weight": tf.fill([40, 40], 2.0),
            "epoch": tf.constant(3, tf.int64),
        }

    ds = tf.data.Dataset.from_tensors(t.element(48, 48)).repeat(3).map(patch)
    out = ds.apply(PadAndBatch(2, pad_to_multiple=32, drop_remainder=True))
    spec = out.element_spec
    assert spec["image"].shape.as_list() == [2, 64, 64, 3]
    assert spec["weight"].shape.as_list() == [2, 64, 64]
    batch = next(iter(out))
    assert float(tf.reduce_sum(batch["weight"])) == 2 * 2.0 * 40 * 40  # padding has weight 0
    assert batch["epoch"].numpy().tolist() == [3, 3]


@settings(max_examples=25, deadline=None)
@given(
    sizes=st.lists(st.tuples(st.integers(1, 40), st.integers(1, 40)), min_size=1, max_size=3),
    multiple=st.integers(1, 33),
)
def test_pad_and_batch_property(sizes, multiple):
    (batch,) = list(t.dataset(sizes).apply(PadAndBatch(len(sizes), pad_to_multiple=multiple)))
    check_padded_batch(batch, sizes, multiple)


def test_pad_to_multiple_eager_equals_map():
    e = t.element(5, 7)
    eager = pad_to_multiple(e, 4)
    mapped = next(iter(tf.data.Dataset.from_tensors(e).map(lambda x: pad_to_multiple(x, 4))))
    for key in eager:
        np.testing.assert_array_equal(eager[key].numpy(), mapped[key].numpy())
    assert eager["label"].shape.as_list() == [8, 8]


def test_pad_and_batch_int32_labels_with_negative_ignore():
    ds = t.dataset([(5, 7), (3, 4)]).map(lambda e: {**e, "label": tf.cast(e["label"], tf.int32)})
    batch = next(iter(ds.apply(PadAndBatch(2, pad_to_multiple=8, ignore_label=-1))))
    assert int(batch["label"][1, 7, 7]) == -1


@pytest.mark.parametrize(
    "kwargs, error, match",
    [
        ({"batch_size": 0}, ValueError, r"PadAndBatch: batch_size must be >= 1\. Received: batch_size=0"),
        ({"batch_size": 2, "pad_to_multiple": 2.5}, TypeError, r"pad_to_multiple must be an int\. Received"),
    ],
)
def test_pad_and_batch_validation(kwargs, error, match):
    with pytest.raises(error, match=match):
        PadAndBatch(**kwargs)


def test_pad_and_batch_ignore_label_must_fit_dtype():
    with pytest.raises(ValueError, match=r"PadAndBatch: ignore_label=300 does not fit the label dtype uint8.*Received: ignore_label=300"):
        t.dataset([(5, 7)]).apply(PadAndBatch(1, ignore_label=300))


def test_pad_and_batch_rejects_non_contract_dataset():
    ds = tf.data.Dataset.from_tensors({"image": tf.zeros([2, 2, 3], tf.uint8)})
    with pytest.raises(ValueError, match="PadAndBatch: element is missing required keys"):
        ds.apply(PadAndBatch(1))


# ---------------------------------------------------------------------------- to_keras


def fake_logits(x):
    """A deterministic 'model': per-pixel logits from the pixel values (3 classes)."""
    a = tf.constant([1.5, -2.0, 0.5])
    b = tf.constant([-1.0, 0.7, 2.0])
    return x[..., :1] * a * 4.0 + x[..., 1:2] * b * 3.0 + tf.sin(x[..., 2:3] * 7.0)


def test_keras_loss_ignores_padding():
    loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction="mean_with_sample_weight")
    # the image alone, not padded at all
    alone = t.dataset([(37, 53)]).apply(PadAndBatch(1, pad_to_multiple=1)).apply(to_keras())
    x, y, w = next(iter(alone))
    assert x.shape.as_list() == [1, 37, 53, 3]
    expected = float(loss(y, fake_logits(x), w))
    # the same image padded inside a larger batch (64x64), next to another image
    batch = t.dataset([(64, 31), (37, 53)]).apply(PadAndBatch(2)).apply(to_keras())
    xb, yb, wb = next(iter(batch))
    assert xb.shape.as_list() == [2, 64, 64, 3]
    padded = float(loss(yb[1:], fake_logits(xb[1:]), wb[1:]))
    np.testing.assert_allclose(padded, expected, rtol=1e-6)
    # the whole batch is the pixel-weighted mean of its images' unpadded losses
    other = next(iter(t.dataset([(64, 31)]).apply(PadAndBatch(1, pad_to_multiple=1)).apply(to_keras())))
    other_loss = float(loss(other[1], fake_logits(other[0]), other[2]))
    n1, n2 = 64 * 31, 37 * 53
    np.testing.assert_allclose(float(loss(yb, fake_logits(xb), wb)), (n1 * other_loss + n2 * expected) / (n1 + n2), rtol=1e-5)
    # the Keras default divides by B*H*W, padding included: the padded loss shrinks
    default = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
    assert float(default(yb[1:], fake_logits(xb[1:]), wb[1:])) < 0.5 * expected


def test_to_keras_ignored_pixels_and_weight():
    e = t.element(5, 7)
    label = tf.tensor_scatter_nd_update(e["label"], [[1, 1], [2, 3]], tf.constant([255, 255], tf.uint8))
    e = E.make_element(e["image"], label, path="x")
    e["weight"] = tf.fill([5, 7], 3.0)
    ds = tf.data.Dataset.from_tensors(e).apply(PadAndBatch(1, pad_to_multiple=8)).apply(to_keras())
    _, y, w = next(iter(ds))
    assert y.dtype == tf.int32 and w.dtype == tf.float32
    assert int(y[0, 1, 1]) == 0 and float(w[0, 1, 1]) == 0.0
    assert int(y[0, 7, 7]) == 0 and float(w[0, 7, 7]) == 0.0
    assert float(tf.reduce_sum(w)) == 3.0 * (35 - 2)
    assert int(tf.reduce_max(y)) < 3


@pytest.mark.parametrize("dtype, top", [("uint8", 255), ("uint16", 65535), ("float32", 0.75)])
def test_to_keras_image_scaling(dtype, top):
    e = t.element(3, 4, dtype=dtype)
    e["image"] = tf.fill([3, 4, 3], tf.constant(top, tf.as_dtype(dtype)))
    x, _, _ = next(iter(tf.data.Dataset.from_tensors(e).apply(PadAndBatch(1, 1)).apply(to_keras())))
    assert x.dtype == tf.float32
    np.testing.assert_allclose(x.numpy(), 1.0 if dtype != "float32" else 0.75)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_training_and_prediction_scale_pixels_to_the_same_float32_bits(dtype):
    from fcndata.infer import to_model_input

    top = 255 if dtype == "uint8" else 65535
    values = np.unique(np.linspace(0, top, 4099).round().astype(dtype))  # every uint8; uint16 across its range
    image = np.stack([values] * 3, axis=-1)[None]  # [1, n, 3]
    e = t.element(1, len(values), dtype=dtype)
    e["image"] = tf.constant(image[0][None].reshape(1, len(values), 3))
    trained, _, _ = next(iter(tf.data.Dataset.from_tensors(e).apply(PadAndBatch(1, 1)).apply(to_keras())))
    predicted = to_model_input(image[0])
    np.testing.assert_array_equal(trained.numpy()[0, 0].view(np.uint32), predicted.view(np.uint32))


def test_to_keras_masked_input_spec():
    ds = t.dataset(MIXED).apply(PadAndBatch(2)).apply(to_keras(masked_input=True))
    inputs, label, weight = ds.element_spec
    assert inputs["image"].shape.as_list() == [None, None, None, 3] and inputs["image"].dtype == tf.float32
    assert inputs["roi"].shape.as_list() == [None, None, None, 1] and inputs["roi"].dtype == tf.float32
    assert label.dtype == tf.int32 and label.shape.rank == 3
    assert weight.dtype == tf.float32 and weight.shape.rank == 3
    x, _, w = next(iter(ds))
    np.testing.assert_array_equal(x["roi"][..., 0].numpy(), w.numpy())


def test_to_keras_needs_batches():
    with pytest.raises(ValueError, match=r"to_keras: element key 'image' must have rank 4 \(batched\)"):
        t.dataset([(3, 4)]).apply(to_keras())


def test_keras_inputs_eager_equals_map():
    batch = next(iter(t.dataset(MIXED).apply(PadAndBatch(3))))
    eager = keras_inputs(batch)
    mapped = next(iter(tf.data.Dataset.from_tensors(batch).map(keras_inputs)))
    for a, b in zip(eager, mapped):
        np.testing.assert_array_equal(a.numpy(), b.numpy())


# ---------------------------------------------------------------------------- bucketing


SPREAD = ((30, 30), (90, 90), (31, 29), (95, 93), (20, 25), (88, 70), (33, 40), (80, 96), (25, 31), (70, 90))


def test_bucketing_reduces_padding():
    elements = t.dataset(SPREAD)
    plain = padded_fraction(elements, stage=PadAndBatch(2))
    bucketed = padded_fraction(elements, stage=BucketBySize(2, "area", num_buckets=2))
    shaped = padded_fraction(elements, stage=BucketBySize(2, "shape"))
    assert bucketed < plain - 0.2
    assert shaped <= bucketed
    # every element still arrives exactly once, with its own pixels
    batches = list(elements.apply(BucketBySize(2, "area", num_buckets=2)))
    seen = sorted(int(i) for b in batches for i in b["source_index"])
    assert seen == list(range(len(SPREAD)))
    for b in batches:
        sizes = [SPREAD[int(i)] for i in b["source_index"]]
        h, w = b["label"].shape[1:]
        assert h % 32 == 0 and w % 32 == 0
        for k, (eh, ew) in enumerate(sizes):
            np.testing.assert_array_equal(b["image"][k, :eh, :ew].numpy(), t.coordinate_image(eh, ew).numpy())
            assert int(tf.reduce_sum(tf.cast(b["roi"][k], tf.int32))) == eh * ew


def test_bucket_element_spec_and_determinism():
    stage = BucketBySize(3, "aspect", num_buckets=3)
    ds = t.dataset(SPREAD).apply(stage)
    E.check_spec(ds, batched=True)
    assert ds.element_spec["image"].shape.as_list() == [None, None, None, 3]
    first = [b["source_index"].numpy().tolist() for b in ds]
    assert first == [b["source_index"].numpy().tolist() for b in ds]
    dropped = t.dataset(SPREAD).apply(BucketBySize(2, "area", boundaries=(2000.0,), drop_remainder=True))
    assert dropped.element_spec["label"].shape.as_list() == [2, None, None]


def test_derive_boundaries():
    ds = t.dataset([(10, 10), (10, 20), (20, 20), (20, 40)])
    assert derive_boundaries(ds, "area", 2) == (400.0,)
    assert derive_boundaries(ds, "aspect", 2) == (2.0,)
    assert derive_boundaries(t.dataset([(10, 10)] * 3), "area", 4) == ()  # one size, one bucket
    # padded shapes in cells of 16: (1, 1), (1, 2), (2, 2), (2, 3) -> one bucket each
    assert derive_boundaries(ds, "shape", 4, multiple=16) == (4098.0, 8194.0, 8195.0)
    with pytest.raises(ValueError, match=r"derive_boundaries: the dataset is infinite.*Received: max_elements=None"):
        derive_boundaries(ds.repeat(), "area")
    assert derive_boundaries(ds.repeat(), "area", 2, max_elements=4) == (400.0,)


def test_bucket_shape_batches_one_padded_shape():
    sizes = ((30, 30), (60, 60), (31, 29), (50, 63), (17, 3))
    shapes = [tuple(b["label"].shape[1:]) for b in t.dataset(sizes).apply(BucketBySize(2, "shape"))]
    assert sorted(shapes) == [(32, 32), (32, 32), (64, 64)]


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"by": "size"}, r"BucketBySize: by must be one of \['area', 'aspect', 'shape'\].*Received: by='size'"),
        ({"boundaries": (5.0, 2.0)}, r"boundaries must be strictly increasing.*Received: boundaries=\[5.0, 2.0\]"),
        ({"num_buckets": 0}, r"num_buckets must be >= 1"),
    ],
)
def test_bucket_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        BucketBySize(2, **kwargs)


# ---------------------------------------------------------------------------- padded_fraction


def test_padded_fraction_exact_and_from_batches():
    elements = t.dataset(MIXED)
    real = sum(h * w for h, w in MIXED)
    expected = 1.0 - real / (5 * 64 * 64)
    assert padded_fraction(elements, stage=PadAndBatch(5)) == pytest.approx(expected)
    assert padded_fraction(elements.apply(PadAndBatch(5))) == pytest.approx(expected)
    # ignored real pixels (roi 0) are not padding: the extent is recovered from image/label
    def ignore_half(e):
        return {**e, "roi": tf.zeros_like(e["roi"]), "label": tf.fill(tf.shape(e["label"]), tf.constant(255, tf.uint8))}

    assert padded_fraction(elements.map(ignore_half).apply(PadAndBatch(5))) == pytest.approx(expected)
    with pytest.raises(ValueError, match=r"padded_fraction: the dataset is infinite\. Pass num_batches"):
        padded_fraction(elements.repeat().apply(PadAndBatch(2)))
    assert padded_fraction(elements.repeat().apply(PadAndBatch(5)), num_batches=2) == pytest.approx(expected)


# ---------------------------------------------------------------------------- config


def test_batching_from_config_modes():
    data = DataConfig(seed=5)
    cfg = BatchingConfig(batch_size=2, shuffle_buffer=8, drop_remainder=True)
    train = batching_from_config(cfg, data, "train")
    assert train == E.Chain((Shuffle(8, 5), PadAndBatch(2, 32, True, 255)))
    assert batching_from_config(cfg, data, "train", shuffle=False) == PadAndBatch(2, 32, True, 255)
    assert batching_from_config(cfg, data, "eval") == PadAndBatch(2, 32, False, 255)
    bucket = BatchingConfig(batch_size=2, bucket_by="area", bucket_boundaries=(1000.0,), shuffle_buffer=0)
    assert batching_from_config(bucket, data, "eval") == BucketBySize(2, "area", (1000.0,), 4, 32, 255, False)
    assert batching_from_config(bucket, data, "predict") == PadAndBatch(2, 32, False, 255)
    with pytest.raises(ValueError, match=r"batching_from_config: mode must be one of \['train', 'eval', 'predict'\]\. Received: mode='test'"):
        batching_from_config(cfg, data, "test")


def test_batching_from_config_train_is_seeded():
    cfg = BatchingConfig(batch_size=2, shuffle_buffer=8, bucket_by="area", num_buckets=2)
    stage = batching_from_config(cfg, DataConfig(seed=1), "train")
    runs = [[b["source_index"].numpy().tolist() for b in t.dataset(SPREAD).apply(stage)] for _ in range(2)]
    assert runs[0] == runs[1]
    assert sorted(i for batch in runs[0] for i in batch) == list(range(len(SPREAD)))


def test_bucket_boundaries_inside_flat_map():
    stage = BucketBySize(2, "area", num_buckets=2)
    per_epoch = tf.data.Dataset.range(2)
    with pytest.raises(ValueError, match=r"BucketBySize: boundaries=None must be derived.*stage.derive\(finite_dataset\)"):
        per_epoch.flat_map(lambda _: t.dataset(SPREAD).apply(stage))
    derived = stage.derive(t.dataset(SPREAD))
    assert derived.boundaries == derive_boundaries(t.dataset(SPREAD), "area", 2)
    batches = list(per_epoch.flat_map(lambda _: t.dataset(SPREAD).apply(derived)))
    assert sum(int(b["label"].shape[0]) for b in batches) == 2 * len(SPREAD)
    cfg = BatchingConfig(batch_size=2, bucket_by="area", num_buckets=2)
    assert batching_from_config(cfg, DataConfig(), "eval", dataset=t.dataset(SPREAD)) == derived
