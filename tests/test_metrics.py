"""Tests for fcndata.metrics: hand-computed confusion matrix, masking, compile(weighted_metrics=...)."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcndata.metrics import ConfusionMatrix, MeanIoU, PixelAccuracy, per_class_iou

# 2 x 3 labels / predictions, 3 classes; 255 = ignored
LABELS = np.array([[[0, 0, 1], [2, 255, 1]]])
PRED = np.array([[[0, 1, 1], [2, 0, 0]]])
# rows = true, cols = predicted: (0,0), (0,1), (1,1), (2,2), (1,0); the 255 pixel is skipped
CONFUSION = np.array([[1, 1, 0], [1, 1, 0], [0, 0, 1]])


def _logits(pred, k=3):
    return np.eye(k, dtype="float32")[pred] * 4.0


def test_confusion_matrix_hand_computed_from_logits_and_ids():
    m = ConfusionMatrix(3)
    m.update_state(LABELS, _logits(PRED))
    np.testing.assert_array_equal(m.result().numpy(), CONFUSION)
    m.update_state(LABELS, PRED)  # class ids accumulate
    np.testing.assert_array_equal(m.result().numpy(), 2 * CONFUSION)
    m.reset_state()
    assert not m.result().numpy().any()


def test_sample_weight_zero_pixels_are_not_counted():
    weight = np.array([[[1.0, 0.0, 0.5], [1.0, 1.0, 0.0]]], "float32")  # drops (0,1) and (1,0)
    m = ConfusionMatrix(3)
    m.update_state(LABELS, _logits(PRED), sample_weight=weight)
    np.testing.assert_array_equal(m.result().numpy(), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # counts are pixels, not weights (0.5 counts as 1); [B, H, W, 1] weights work too
    m.reset_state()
    m.update_state(LABELS, _logits(PRED), sample_weight=weight[..., None])
    assert m.result().numpy().sum() == 3


def test_per_class_iou_and_mean_iou():
    iou = per_class_iou(CONFUSION)
    np.testing.assert_allclose(iou, [1 / 3, 1 / 3, 1.0])
    m = MeanIoU(3)
    m.update_state(LABELS, _logits(PRED))
    np.testing.assert_allclose(float(m.result()), (1 / 3 + 1 / 3 + 1) / 3, rtol=1e-6)
    # a class absent from labels and predictions does not count in the mean
    m4 = MeanIoU(4)
    m4.update_state(LABELS, PRED)
    np.testing.assert_allclose(float(m4.result()), (1 / 3 + 1 / 3 + 1) / 3, rtol=1e-6)
    assert np.isnan(per_class_iou(m4)[3])  # a metric's confusion matrix is read directly


def test_mean_iou_ignores_roi_zero_padding():
    # padded batch as to_keras yields it: label 0 and weight 0 on padding, predicted 1 there
    labels = np.zeros((1, 4, 4), "int32")
    labels[0, :2, :2] = 1
    pred = np.ones((1, 4, 4), "int32")
    roi = np.zeros((1, 4, 4), "float32")
    roi[0, :2, :2] = 1
    m = MeanIoU(2)
    m.update_state(labels, pred, sample_weight=roi)
    assert float(m.result()) == 1.0
    m.reset_state()
    m.update_state(labels, pred)  # without the weight the padding is scored as class 0
    assert float(m.result()) == pytest.approx(0.25 / 2)


def test_pixel_accuracy():
    m = PixelAccuracy(3)
    m.update_state(LABELS, _logits(PRED))
    assert float(m.result()) == pytest.approx(3 / 5)


def test_config_round_trip_and_graph_mode():
    m = MeanIoU(3, ignore_label=254, name="iou")
    clone = MeanIoU.from_config(m.get_config())
    assert (clone.num_classes, clone.ignore_label, clone.name) == (3, 254, "iou")

    @tf.function(jit_compile=True)
    def update(y, p):
        clone.update_state(y, p)

    update(tf.constant(LABELS, tf.int32), tf.constant(_logits(PRED)))
    np.testing.assert_allclose(float(clone.result()), 5 / 9, rtol=1e-6)


def test_weighted_metrics_in_compile_receive_sample_weight():
    # A "model" that predicts class 1 everywhere; real pixels are class 1, padding is label 0 / weight 0.
    inputs = keras.Input((None, None, 1))
    logits = keras.layers.Conv2D(
        2, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant([0.0, 1.0])
    )(inputs)
    model = keras.Model(inputs, logits)
    model.compile(
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=[MeanIoU(2, name="iou_unweighted")],
        weighted_metrics=[MeanIoU(2), PixelAccuracy(2)],
    )
    x = np.zeros((2, 4, 4, 1), "float32")
    y = np.zeros((2, 4, 4), "int32")
    y[:, :2, :2] = 1
    w = (y == 1).astype("float32")
    ds = tf.data.Dataset.from_tensor_slices((x, y, w)).batch(2)
    result = model.evaluate(ds, return_dict=True, verbose=0)
    assert result["mean_iou"] == pytest.approx(1.0)
    assert result["pixel_accuracy"] == pytest.approx(1.0)
    assert result["iou_unweighted"] == pytest.approx(0.125)


def test_invalid_num_classes():
    with pytest.raises(ValueError, match="MeanIoU: num_classes must be a positive int. Received: num_classes=0"):
        MeanIoU(0)


def test_numpy_confusion_matrix_and_iou_hand_checked_on_2x3():
    from fcndata.metrics import confusion_matrix, iou_by_name, mean_iou

    # the 2 x 3 example above: the 255 pixel is ignored, five pixels counted
    confusion = confusion_matrix(LABELS, PRED, 3, ignore_label=255)
    np.testing.assert_array_equal(confusion, CONFUSION)
    assert confusion.dtype == np.int64
    # a roi drops (0,1) and (1,0); the ignored pixel's roi is 1 but 255 is outside 0..2
    roi = np.array([[[1, 0, 1], [1, 1, 0]]])
    np.testing.assert_array_equal(confusion_matrix(LABELS, PRED, 3, roi=roi), [[1, 0, 0], [0, 1, 0], [0, 0, 1]])
    # class 0: 1 / (2 + 2 - 1), class 1: 1 / 3, class 2: 1 / 1
    assert mean_iou(confusion) == pytest.approx((1 / 3 + 1 / 3 + 1) / 3)
    # a fourth class absent from labels and predictions: None, and left out of the mean
    confusion4 = confusion_matrix(LABELS, PRED, 4, ignore_label=255)
    result = iou_by_name(confusion4, ["a", "b", "c", "d"])
    assert result["per_class_iou"]["d"] is None
    assert [result["per_class_iou"][n] for n in "abc"] == pytest.approx([1 / 3, 1 / 3, 1.0])
    assert result["mean_iou"] == pytest.approx(mean_iou(confusion))
    # nothing counted: NaN, no class
    assert np.isnan(mean_iou(confusion_matrix(LABELS, PRED, 3, roi=np.zeros_like(LABELS))))
