"""Tests for fcndata.sampling: class counts, class weights, loss sampling, class distribution."""

import json
from fractions import Fraction

import numpy as np
import pytest
import tensorflow as tf

import fcndata.testing as t
from fcndata import elements as E
from fcndata.batching import PadAndBatch, to_keras
from fcndata.elements import Chain
from fcndata.config import DataConfig, SamplingConfig
from fcndata.sampling import (
    ClassWeights,
    LossSampling,
    apply_class_weights,
    cached_class_counts,
    class_counts,
    class_distribution,
    class_weights,
    count_classes,
    loss_sampling_mask,
    sampling_from_config,
)

# Two 2x4 stripe images, 3 classes: A = widths [1, 3, 0], B = widths [2, 1, 1].
# Counts: A [2, 6, 0], B [4, 2, 2]; totals [6, 8, 2]; 8 labeled pixels per image.
WIDTHS = ([1, 3, 0], [2, 1, 1])


def stripes():
    ds = None
    for i, widths in enumerate(WIDTHS):
        one = tf.data.Dataset.from_tensors(t.element(2, 4, source_index=i, widths=widths))
        ds = one if ds is None else ds.concatenate(one)
    return ds


def many(n=20, size=64):
    """n elements of size x size with source_index 0..n-1 (a large pixel sample)."""
    return (
        tf.data.Dataset.from_tensors(t.element(size, size))
        .repeat(n)
        .enumerate()
        .map(lambda i, e: {**e, "source_index": i})
    )


# ---------------------------------------------------------------------------- counting


def test_class_counts_stripes():
    assert class_counts(stripes(), 3).tolist() == [6, 8, 2]
    assert class_counts(stripes(), 3).dtype == np.int64
    assert class_counts(stripes(), 3, per_image=True).tolist() == [[2, 6, 0], [4, 2, 2]]
    assert class_counts(stripes().apply(PadAndBatch(2)), 3).tolist() == [6, 8, 2]  # padding not counted
    widths = [10, 40, 3]
    ds = tf.data.Dataset.from_tensors(t.element(37, 53, widths=widths))
    assert class_counts(ds, 3).tolist() == t.stripe_counts(37, widths)


def test_count_classes_eager_equals_map_and_skips_ignored():
    e = t.element(5, 7, widths=[2, 4, 1])
    label = tf.tensor_scatter_nd_update(e["label"], [[0, 0], [1, 1]], tf.constant([255, 7], tf.uint8))
    e = E.make_element(e["image"], label)
    eager = count_classes(e, 3).numpy().tolist()
    mapped = next(iter(tf.data.Dataset.from_tensors(e).map(lambda x: count_classes(x, 3)))).numpy().tolist()
    assert eager == mapped == [10 - 2, 20, 5]  # (0,0) ignored, (1,1) out of range (7): both class 0


def test_class_counts_infinite_needs_num_batches():
    with pytest.raises(ValueError, match=r"class_counts: the dataset is infinite.*Received: num_batches=None"):
        class_counts(stripes().repeat(), 3)
    assert class_counts(stripes().repeat(), 3, num_batches=4).tolist() == [12, 16, 4]


def test_cached_class_counts_written_and_reused(tmp_path):
    path = tmp_path / "recipe.class_counts.json"
    counts = cached_class_counts(stripes(), 3, path, key="abc")
    assert counts.tolist() == [6, 8, 2]
    saved = json.loads(path.read_text())
    assert saved["key"] == "abc" and saved["counts"] == [6, 8, 2]
    assert saved["per_image_counts"] == [[2, 6, 0], [4, 2, 2]]
    # same key: read from the cache, the (different) dataset is not counted
    other = tf.data.Dataset.from_tensors(t.element(3, 3))
    assert cached_class_counts(other, 3, path, key="abc").tolist() == [6, 8, 2]
    assert cached_class_counts(other, 3, path, key="abc", per_image=True).tolist() == [[2, 6, 0], [4, 2, 2]]
    # another key (the data changed): counted again and rewritten
    assert cached_class_counts(other, 3, path, key="xyz").tolist() == [3, 3, 3]
    assert json.loads(path.read_text())["key"] == "xyz"
    path.write_text("{not json")
    assert cached_class_counts(other, 3, path, key="xyz").tolist() == [3, 3, 3]


# ---------------------------------------------------------------------------- weights


def test_median_frequency_paper_definition():
    # freq_c = n_c / labeled pixels of images containing c:
    #   class 0: 6 / 16, class 1: 8 / 16, class 2: 2 / 8 (only in B); median = 6 / 16
    per_image = class_counts(stripes(), 3, per_image=True)
    np.testing.assert_allclose(class_weights(per_image, "median_frequency"), [1.0, 0.75, 1.5], rtol=1e-6)
    # from totals only freq_c = n_c / 16: class 2 looks rarer than it is
    np.testing.assert_allclose(class_weights([6, 8, 2], "median_frequency"), [1.0, 0.75, 3.0], rtol=1e-6)


def test_inverse_frequency_table():
    weights = class_weights([6, 8, 2], "inverse_frequency")
    np.testing.assert_allclose(weights, [16 / 18, 16 / 24, 16 / 6], rtol=1e-6)
    assert float(np.dot(weights, [6, 8, 2]) / 16) == pytest.approx(1.0)  # pixel-weighted mean is 1
    np.testing.assert_allclose(class_weights([[2, 6, 0], [4, 2, 2]], "inverse_frequency"), weights)


def test_effective_number_table():
    # (1 - b) / (1 - b^n) with b = 1/2: n = 6 -> 32/63, n = 8 -> 128/255, n = 2 -> 2/3
    raw = [Fraction(32, 63), Fraction(128, 255), Fraction(2, 3)]
    expected = [float(r * 3 / sum(raw)) for r in raw]
    np.testing.assert_allclose(class_weights([6, 8, 2], "effective_number", beta=0.5), expected, rtol=1e-6)


def test_absent_classes_clipping_and_lists():
    assert class_weights([10, 0, 30], "inverse_frequency").tolist()[1] == 0.0
    assert class_weights([10, 0, 30], "median_frequency").tolist()[1] == 0.0
    assert class_weights([1, 10000], "inverse_frequency", max_weight=50.0)[0] == 50.0
    assert class_weights([1, 10000], "inverse_frequency", max_weight=None)[0] == pytest.approx(5000.5)
    assert class_weights(None, [1.0, 2.5]).tolist() == [1.0, 2.5]
    assert class_weights([0, 0], "median_frequency").tolist() == [0.0, 0.0]


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        (([1, 2], "balanced"), {}, r"class_weights: method must be one of \['inverse_frequency'.*Received: method='balanced'"),
        ((None, "inverse_frequency"), {}, r"needs class counts.*Received: counts=None"),
        (([1, 2], [1.0]), {}, r"give one weight per class: 2 classes, 1 weights"),
        (([1, 2], [1.0, -1.0]), {}, r"finite, non-negative numbers"),
        (([1, -2], "inverse_frequency"), {}, r"counts must be non-negative"),
        (([1, 2], "effective_number"), {"beta": 1.0}, r"beta must be in \[0, 1\).*Received: beta=1.0"),
        (([1, 2], "inverse_frequency"), {"max_weight": 0}, r"max_weight must be a positive number or None"),
    ],
)
def test_class_weights_errors(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        class_weights(*args, **kwargs)


# ---------------------------------------------------------------------------- ClassWeights


def test_class_weights_stage():
    e = t.element(2, 3)
    label = tf.tensor_scatter_nd_update(e["label"], [[0, 0]], tf.constant([255], tf.uint8))
    e = {**E.make_element(e["image"], label), "weight": tf.fill([2, 3], 2.0)}
    ds = tf.data.Dataset.from_tensors(e).apply(ClassWeights([1.0, 3.0, 0.5]))
    assert next(iter(ds))["weight"].numpy().tolist() == [[0.0, 6.0, 1.0], [2.0, 6.0, 1.0]]
    eager = apply_class_weights(e, tf.constant([1.0, 3.0, 0.5]))["weight"].numpy().tolist()
    assert eager == [[0.0, 6.0, 1.0], [2.0, 6.0, 1.0]]
    batched = t.dataset([(2, 3), (3, 5)]).apply(PadAndBatch(2, 8)).apply(ClassWeights([1.0, 1.0, 1.0]))
    assert batched.element_spec["weight"].shape.rank == 3
    assert float(tf.reduce_sum(next(iter(batched))["weight"])) == 6 + 15  # padding is ignore -> 0


def test_class_weights_stage_validation():
    with pytest.raises(ValueError, match=r"ClassWeights: weights must be a non-empty list of finite, non-negative"):
        ClassWeights([1.0, float("nan")])
    with pytest.raises(TypeError, match=r"ClassWeights: weights must be a list of numbers"):
        ClassWeights(["a"])


# ---------------------------------------------------------------------------- LossSampling


def sample_weights(seed, p=0.3, deterministic=True):
    options = tf.data.Options()
    options.deterministic = deterministic
    ds = many().apply(LossSampling(p, seed)).with_options(options)
    return {int(e["source_index"]): e["weight"].numpy() for e in ds}


def test_loss_sampling_keeps_p_of_real_pixels_and_no_padding():
    p = 0.3
    sizes = [(37, 53), (64, 31), (17, 17), (29, 41)] * 8
    ds = t.dataset(sizes).apply(LossSampling(p, seed=4)).apply(PadAndBatch(4)).apply(to_keras())
    kept = real = padding_kept = 0
    for (_, _, w), idx in zip(ds, range(len(sizes) // 4)):
        for k in range(4):
            h, wd = sizes[idx * 4 + k]
            kept += int(np.count_nonzero(w[k, :h, :wd]))
            real += h * wd
            padding_kept += int(np.count_nonzero(w[k])) - int(np.count_nonzero(w[k, :h, :wd]))
    assert padding_kept == 0
    assert abs(kept / real - p) < 0.01
    weights = np.concatenate([w.ravel() for w in sample_weights(seed=1).values()])
    assert abs(np.mean(weights) - p) < 0.01  # 81920 pixels


def test_loss_sampling_deterministic_and_seeded():
    first = sample_weights(seed=1)
    again = sample_weights(seed=1, deterministic=False)  # parallel, autotuned, any order
    assert all(np.array_equal(first[i], again[i]) for i in first)
    other = sample_weights(seed=2)
    assert not any(np.array_equal(first[i], other[i]) for i in first)
    assert not np.array_equal(first[0], first[1])  # each element its own mask


def test_loss_sampling_mask_keys_on_epoch_and_origin():
    e = t.element(16, 16)
    base = loss_sampling_mask(e, 0.5, 0).numpy()
    assert not np.array_equal(base, loss_sampling_mask({**e, "epoch": tf.constant(1, tf.int64)}, 0.5, 0).numpy())
    assert not np.array_equal(base, loss_sampling_mask({**e, "origin": tf.constant([0, 8])}, 0.5, 0).numpy())


def test_loss_sampling_multiplies_weight_and_rescales():
    e = {**t.element(16, 16), "weight": tf.fill([16, 16], 2.0)}
    out = next(iter(tf.data.Dataset.from_tensors(e).apply(LossSampling(0.25, 0, rescale=True))))
    assert set(np.unique(out["weight"].numpy()).tolist()) <= {0.0, 8.0}
    assert LossSampling(1.0).keep_probability == 1.0


@pytest.mark.parametrize("p", [0.0, 1.5, -0.1])
def test_loss_sampling_validation(p):
    with pytest.raises(ValueError, match=rf"LossSampling: keep_probability must be in \(0, 1\].*Received: keep_probability={p}"):
        LossSampling(p)


# ---------------------------------------------------------------------------- config + distribution


def test_sampling_from_config():
    data = DataConfig(num_classes=3, seed=9)
    assert sampling_from_config(SamplingConfig(), data) is None
    assert sampling_from_config(SamplingConfig(loss_keep_probability=1.0), data) is None
    stage = sampling_from_config(SamplingConfig(class_weights="median_frequency", loss_keep_probability=0.5, seed=2), data, [6, 8, 2])
    assert stage == Chain((ClassWeights((1.0, 0.75, 3.0)), LossSampling(0.5, 2)))
    assert sampling_from_config(SamplingConfig(class_weights=(1.0, 2.0, 3.0)), data) == ClassWeights((1.0, 2.0, 3.0))
    with pytest.raises(ValueError, match=r"sampling.class_weights='inverse_frequency' needs class counts.*Received: counts=None"):
        sampling_from_config(SamplingConfig(class_weights="inverse_frequency"), data)
    with pytest.raises(ValueError, match=r"must give data.num_classes=3 weights\. Received: 2 weights"):
        sampling_from_config(SamplingConfig(class_weights=(1.0, 2.0)), data)


def test_class_distribution_reports_what_is_delivered():
    # totals [6, 8, 2] unweighted
    np.testing.assert_allclose(class_distribution(stripes(), 3), [6 / 16, 8 / 16, 2 / 16])
    # inverse-frequency weights deliver every class equally; padding adds nothing
    weighted = stripes().apply(ClassWeights(class_weights([6, 8, 2], "inverse_frequency").tolist()))
    np.testing.assert_allclose(class_distribution(weighted, 3), [1 / 3] * 3, rtol=1e-6)
    batches = weighted.apply(PadAndBatch(2))
    np.testing.assert_allclose(class_distribution(batches, 3), [1 / 3] * 3, rtol=1e-6)
    np.testing.assert_allclose(class_distribution(batches.apply(to_keras()), 3), [1 / 3] * 3, rtol=1e-6)
    with pytest.raises(ValueError, match=r"class_distribution: the dataset is infinite"):
        class_distribution(stripes().repeat(), 3)
