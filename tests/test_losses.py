"""Tests for fcndata.losses: perfect ≈ 0, hand values, weights, ignore_label, config, Keras parity."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcndata.config import LossConfig
from fcndata.losses import (
    DiceLoss,
    MaskedSparseCrossEntropy,
    SigmoidFocalLoss,
    SparseFocalLoss,
    SumOfLosses,
    loss_from_config,
)

RNG = np.random.default_rng(0)
K = 3


def _random_case(b=2, h=5, w=7, k=K):
    logits = RNG.normal(0, 2, (b, h, w, k)).astype("float32")
    labels = RNG.integers(0, k, (b, h, w)).astype("int32")
    return labels, logits


def _perfect_logits(labels, k=K, scale=30.0):
    return (np.eye(k, dtype="float32")[labels] * 2 - 1) * scale


ALL_LOSSES = [
    MaskedSparseCrossEntropy(),
    SparseFocalLoss(gamma=2.0, alpha=[0.2, 0.3, 0.5]),
    SigmoidFocalLoss(gamma=2.0, alpha=0.25),
    DiceLoss(K),
    SumOfLosses([(MaskedSparseCrossEntropy(), 1.0), (DiceLoss(K), 0.5)]),
]


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: type(l).__name__)
def test_perfect_prediction_is_about_zero(loss):
    labels, _ = _random_case()
    labels[0, 0, 0] = 255
    value = float(loss(labels, _perfect_logits(np.where(labels == 255, 0, labels))))
    assert 0.0 <= value < 1e-4


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: type(l).__name__)
def test_ignored_pixels_do_not_count(loss):
    labels, logits = _random_case()
    ignored = labels.copy()
    ignored[:, :2] = 255
    other = logits.copy()
    other[:, :2] = RNG.normal(0, 5, other[:, :2].shape)  # anything at ignored pixels
    a = float(loss(ignored, logits))
    b = float(loss(ignored, other))
    # the same as weighting those pixels 0 with any label in their place
    weight = np.ones(labels.shape, "float32")
    weight[:, :2] = 0
    c = float(loss(labels, logits, sample_weight=weight))
    np.testing.assert_allclose([a, b], [c, c], rtol=1e-5)


@pytest.mark.parametrize("loss", ALL_LOSSES, ids=lambda l: type(l).__name__)
def test_get_config_round_trip(loss):
    labels, logits = _random_case()
    weight = RNG.random(labels.shape).astype("float32")
    clone = type(loss).from_config(loss.get_config())
    assert clone.get_config() == loss.get_config()
    again = keras.losses.deserialize(keras.losses.serialize(loss))
    expected = float(loss(labels, logits, sample_weight=weight))
    np.testing.assert_allclose(float(clone(labels, logits, sample_weight=weight)), expected, rtol=1e-6)
    np.testing.assert_allclose(float(again(labels, logits, sample_weight=weight)), expected, rtol=1e-6)


def test_cross_entropy_hand_computed_1x2x2():
    # logits [0, ln 3] -> p = [1/4, 3/4]
    logits = np.zeros((1, 2, 2, 2), "float32")
    logits[..., 1] = np.log(3.0)
    labels = np.array([[[0, 1], [1, 255]]])
    weight = np.array([[[1.0, 2.0], [0.0, 5.0]]], "float32")
    loss = MaskedSparseCrossEntropy()
    # unweighted: mean over the 3 valid pixels of [ln 4, ln 4/3, ln 4/3]
    expected = (np.log(4) + 2 * np.log(4 / 3)) / 3
    np.testing.assert_allclose(float(loss(labels, logits)), expected, rtol=1e-6)
    # weighted (mean_with_sample_weight): (1 ln4 + 2 ln 4/3 + 0) / (1 + 2 + 0); the 5 is ignored
    expected_w = (np.log(4) + 2 * np.log(4 / 3)) / 3
    np.testing.assert_allclose(float(loss(labels, logits, sample_weight=weight)), expected_w, rtol=1e-6)
    # sum_over_batch_size divides by all 4 pixels
    loss_sb = MaskedSparseCrossEntropy(reduction="sum_over_batch_size")
    np.testing.assert_allclose(float(loss_sb(labels, logits, sample_weight=weight)), expected_w * 3 / 4, rtol=1e-6)


def test_cross_entropy_weighted_equals_manual_and_keras():
    labels, logits = _random_case()
    weight = RNG.random(labels.shape).astype("float32")
    per_pixel = keras.losses.SparseCategoricalCrossentropy(from_logits=True, reduction=None)(labels, logits).numpy()
    expected = (per_pixel * weight).sum() / weight.sum()
    np.testing.assert_allclose(float(MaskedSparseCrossEntropy()(labels, logits, sample_weight=weight)), expected, rtol=1e-5)
    # [B, H, W, 1] weights work too
    np.testing.assert_allclose(
        float(MaskedSparseCrossEntropy()(labels, logits, sample_weight=weight[..., None])), expected, rtol=1e-5
    )


def test_label_smoothing_matches_keras_categorical():
    labels, logits = _random_case()
    ours = MaskedSparseCrossEntropy(label_smoothing=0.1)(labels, logits)
    theirs = keras.losses.CategoricalCrossentropy(from_logits=True, label_smoothing=0.1)(np.eye(K)[labels], logits)
    np.testing.assert_allclose(float(ours), float(theirs), rtol=1e-5)


@pytest.mark.parametrize("alpha", [None, 0.25, [0.1, 0.3, 0.6]])
@pytest.mark.parametrize("gamma", [0.0, 2.0])
def test_sparse_focal_equals_keras_categorical_focal(alpha, gamma):
    labels, logits = _random_case()
    ours = SparseFocalLoss(gamma=gamma, alpha=alpha, reduction=None)(labels, logits).numpy()
    keras_alpha = 1.0 if alpha is None else alpha
    theirs = keras.losses.CategoricalFocalCrossentropy(
        alpha=keras_alpha, gamma=gamma, from_logits=True, reduction=None
    )(np.eye(K, dtype="float32")[labels], logits).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_focal_gamma_zero_is_cross_entropy():
    labels, logits = _random_case()
    labels[0, 0] = 255
    weight = RNG.random(labels.shape).astype("float32")
    np.testing.assert_allclose(
        float(SparseFocalLoss(gamma=0.0)(labels, logits, sample_weight=weight)),
        float(MaskedSparseCrossEntropy()(labels, logits, sample_weight=weight)),
        rtol=1e-5,
    )


def test_focal_probabilities_input():
    labels, logits = _random_case()
    probs = tf.nn.softmax(logits).numpy()
    np.testing.assert_allclose(
        float(SparseFocalLoss(from_logits=False)(labels, probs)), float(SparseFocalLoss()(labels, logits)), rtol=1e-4
    )


@pytest.mark.parametrize("alpha", [None, 0.25])
def test_sigmoid_focal_equals_keras_binary_focal(alpha):
    targets = RNG.integers(0, 2, (2, 5, 7, K)).astype("float32")
    logits = RNG.normal(0, 2, targets.shape).astype("float32")
    ours = SigmoidFocalLoss(gamma=2.0, alpha=alpha, reduction=None)(targets, logits).numpy()
    theirs = keras.losses.BinaryFocalCrossentropy(
        apply_class_balancing=alpha is not None, alpha=alpha or 0.25, gamma=2.0, from_logits=True, reduction=None
    )(targets, logits).numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_sigmoid_focal_sparse_labels_and_single_logit():
    labels, logits = _random_case()
    dense = SigmoidFocalLoss()(np.eye(K, dtype="float32")[labels], logits)
    np.testing.assert_allclose(float(SigmoidFocalLoss()(labels, logits)), float(dense), rtol=1e-6)
    binary = RNG.integers(0, 2, (1, 4, 4)).astype("int32")
    one_logit = RNG.normal(0, 1, (1, 4, 4, 1)).astype("float32")
    np.testing.assert_allclose(
        float(SigmoidFocalLoss()(binary, one_logit)),
        float(SigmoidFocalLoss()(binary[..., None].astype("float32"), one_logit)),
        rtol=1e-6,
    )


def test_dice_hand_computed():
    # two pixels, two classes, probabilities given directly
    probs = np.array([[[[0.75, 0.25], [0.5, 0.5]]]], "float32")
    labels = np.array([[[0, 1]]])
    loss = DiceLoss(2, smooth=1.0, from_logits=False)
    d0 = (2 * 0.75 + 1) / ((0.75 + 0.5) + 1 + 1)
    d1 = (2 * 0.5 + 1) / ((0.25 + 0.5) + 1 + 1)
    np.testing.assert_allclose(float(loss(labels, probs)), 1 - (d0 + d1) / 2, rtol=1e-6)
    # weighting the second pixel 0 leaves class 1 with no pixels: D1 = 1 / (0.25 + 1)
    weighted = float(loss(labels, probs, sample_weight=np.array([[[1.0, 0.0]]], "float32")))
    d0w, d1w = (2 * 0.75 + 1) / (0.75 + 1 + 1), 1 / (0.25 + 1)
    np.testing.assert_allclose(weighted, 1 - (d0w + d1w) / 2, rtol=1e-6)


def test_dice_per_image_differs_from_batch():
    labels, logits = _random_case()
    assert float(DiceLoss(K, per_image=True)(labels, logits)) != pytest.approx(float(DiceLoss(K)(labels, logits)))


def test_sum_of_losses_is_the_weighted_sum():
    labels, logits = _random_case()
    weight = RNG.random(labels.shape).astype("float32")
    ce, dice = MaskedSparseCrossEntropy(), DiceLoss(K)
    total = SumOfLosses([(ce, 1.0), (dice, 0.5)])(labels, logits, sample_weight=weight)
    expected = float(ce(labels, logits, sample_weight=weight)) + 0.5 * float(dice(labels, logits, sample_weight=weight))
    np.testing.assert_allclose(float(total), expected, rtol=1e-6)


def test_losses_work_inside_tf_function():
    labels, logits = _random_case()
    loss = SparseFocalLoss(alpha=[1.0, 2.0, 3.0])
    graph = tf.function(lambda y, p: loss(y, p), jit_compile=True)
    np.testing.assert_allclose(float(graph(labels, logits)), float(loss(labels, logits)), rtol=1e-5)


def test_loss_from_config():
    assert isinstance(loss_from_config(LossConfig(), 3), MaskedSparseCrossEntropy)
    focal = loss_from_config(LossConfig(name="focal", gamma=1.0, alpha=(0.2, 0.3, 0.5)), 3, ignore_label=0 + 254)
    assert (focal.gamma, focal.alpha, focal.ignore_label) == (1.0, [0.2, 0.3, 0.5], 254)
    assert isinstance(loss_from_config(LossConfig(name="sigmoid_focal", alpha=0.25), 3), SigmoidFocalLoss)
    assert loss_from_config(LossConfig(name="dice"), 4).num_classes == 4
    total = loss_from_config(
        LossConfig(name="sum", gamma=3.0, terms=({"name": "focal"}, {"name": "dice", "weight": 0.5, "smooth": 0.0})), 3
    )
    assert [w for _, w in total.terms] == [1.0, 0.5]
    assert total.terms[0][0].gamma == 3.0 and total.terms[1][0].smooth == 0.0


def test_loss_errors_say_what_and_received():
    with pytest.raises(ValueError, match=r"loss.alpha: one value per class is needed, num_classes=3. Received: alpha=\[0.5, 0.5\]"):
        loss_from_config(LossConfig(name="focal", alpha=(0.5, 0.5)), 3)
    with pytest.raises(ValueError, match=r"loss.terms\[0\]: unknown key 'gama'.*Received:"):
        loss_from_config(LossConfig(name="sum", terms=({"name": "focal", "gama": 2},)), 3)
    with pytest.raises(ValueError, match="loss.terms: name 'sum' needs a list of terms.*Received: terms=None"):
        loss_from_config(LossConfig(name="sum"), 3)
    with pytest.raises(ValueError, match="gamma must be >= 0. Received: gamma=-1"):
        SparseFocalLoss(gamma=-1)
    with pytest.raises(ValueError, match="needs 3 values.*Received: alpha=\\[1.0, 2.0\\]"):
        SparseFocalLoss(alpha=[1, 2])(*_random_case())
