"""How well a trained model segments the validation split, and whether to trust it.

:func:`evaluate` scores a model on a split (confusion matrix over the valid pixels, mean
and per-class IoU, pixel accuracy, with :mod:`fcndata.metrics`); :func:`check_trained_model`
runs the trainer's two checks after training (inference vs training mode, a single
predicted class); :func:`validation_examples` crops images, labels and predictions for
``predictions.png``.
"""

from __future__ import annotations

import sys

import numpy as np

from fcndata.metrics import confusion_matrix, iou_by_name, mean_iou

#: The largest difference of mean IoU between training and inference mode on one validation
#: batch that :func:`check_trained_model` accepts without a warning.
MODE_GAP = 0.05


def evaluate(model, config, max_batches: int | None = None, dataset=None) -> dict:
    """Confusion matrix over the validation split's valid pixels → mean/per-class IoU, accuracy.

    ``dataset``: the run's eval pipeline (``build_pipeline(config, "eval")``), built once
    per run; None builds it.
    """
    import tensorflow as tf

    from fcndata.pipeline import build_pipeline

    k = config.data.num_classes
    confusion = np.zeros((k, k), np.int64)
    ds = build_pipeline(config, "eval") if dataset is None else dataset
    if max_batches:
        ds = ds.take(max_batches)
    for inputs, label, weight in ds:
        pred = tf.argmax(model(inputs, training=False), axis=-1, output_type=tf.int32)
        confusion += confusion_matrix(label, pred, k, roi=weight)
    inter = np.diag(confusion).astype(np.float64)
    return {
        **iou_by_name(confusion, config.data.names),
        "pixel_accuracy": float(inter.sum() / max(confusion.sum(), 1)),
        "valid_pixels": int(confusion.sum()),
        "confusion": confusion.tolist(),
    }


def check_trained_model(model, config, batch, confusion, stream=None) -> dict:
    """Two checks of a trained model; each prints one warning line when it fails.

    1. Inference mode against training mode on the same validation ``batch``: when their
       mean IoU differs by more than :data:`MODE_GAP`, the normalisation statistics the model
       learnt (batch-norm moving averages) do not describe the batches it was trained on, and
       the saved model predicts worse than training said.
    2. The validation prediction (``confusion``, of the whole validation split) holds a single
       class: the model has learnt nothing yet, or the labels are wrong.

    ``model`` is unchanged afterwards: a call in training mode updates batch-norm moving
    statistics and advances the dropout seed generators, so every variable of the model is
    snapshotted before and assigned back after (bit for bit).

    Args:
      model: the trained Keras model.
      config: its recipe (classes, names, ``model.norm``, ``model.masked``).
      batch: one validation batch ``(inputs, label, sample_weight)``.
      confusion: the validation confusion matrix (rows: label, columns: prediction).
      stream: where warnings go (default: ``sys.stderr``).

    Returns:
      ``{"mean_iou_inference_mode", "mean_iou_training_mode", "mode_gap", "predicted_classes",
      "warnings"}``.

    Example:
      >>> import keras, numpy as np
      >>> from fcndata.config import load_config_text
      >>> cfg = load_config_text("data: {num_classes: 2}")
      >>> model = keras.Sequential([keras.Input((4, 4, 1)), keras.layers.Conv2D(2, 1)])
      >>> batch = (np.ones((1, 4, 4, 1), "float32"), np.zeros((1, 4, 4), "int32"), np.ones((1, 4, 4), "float32"))
      >>> checks = check_trained_model(model, cfg, batch, [[10, 0], [6, 0]], stream=sys.stdout)  # doctest: +ELLIPSIS
      fcndata: warning: the model predicts only class class0 on the validation split...
      >>> checks["mode_gap"], checks["predicted_classes"]
      (0.0, ['class0'])
    """
    import tensorflow as tf

    stream = sys.stderr if stream is None else stream
    d = config.data
    inputs, label, weight = batch
    # Training mode changes the model (moving statistics, seed generators): restore it all.
    snapshot = [v.numpy() for v in model.variables]
    try:
        modes = {}
        for training in (False, True):
            logits = model(inputs, training=training)
            pred = tf.argmax(logits, axis=-1, output_type=tf.int32)
            modes[training] = mean_iou(confusion_matrix(label, pred, d.num_classes, roi=weight))
    finally:
        for variable, value in zip(model.variables, snapshot):
            variable.assign(value)
    inference, training = modes[False], modes[True]
    gap = abs(training - inference) if np.isfinite(training) and np.isfinite(inference) else 0.0
    columns = np.asarray(confusion).sum(axis=0)
    predicted = [d.names[i] for i in np.flatnonzero(columns)]
    warnings = []
    if gap > MODE_GAP:
        warnings.append(
            f"normalisation statistics do not transfer to inference: mean IoU {training:.2f} in training mode, "
            f"{inference:.2f} in inference mode on the same validation batch (model.norm={config.model.norm}, "
            f"model.masked={str(config.model.masked).lower()}): the moving averages the saved model predicts with "
            f"do not describe the (padded, size-bucketed) batches it trained on. Use model.norm: group (or instance), "
            f"or model.masked: true (statistics over real pixels only), or train longer so the moving averages settle"
        )
    if len(predicted) == 1:
        name = predicted[0]
        labeled = int(columns.sum())
        share = np.asarray(confusion).sum(axis=1)[d.names.index(name)] / max(labeled, 1)
        warnings.append(
            f"the model predicts only class {name} on the validation split ({labeled} labeled pixels, {share:.0%} of "
            f"them {name}): train longer (--minutes, or more train.epochs), check the labels with python -m "
            f"fcndata.inspect --config {config.source or 'RECIPE'}, and weigh the classes "
            f"(sampling.class_weights: inverse_frequency) or balance the patches (patches.mode: balanced)"
        )
    for line in warnings:
        print(f"fcndata: warning: {line}", file=stream, flush=True)
    return {
        "mean_iou_inference_mode": None if np.isnan(inference) else round(inference, 4),
        "mean_iou_training_mode": None if np.isnan(training) else round(training, 4),
        "mode_gap": round(float(gap), 4),
        "predicted_classes": predicted,
        "warnings": warnings,
    }


def validation_examples(model, config, max_items: int = 4, dataset=None):
    """Validation images, labels and predictions, cropped back to each image's own size.

    ``dataset``: the run's eval pipeline of element dicts (``keras=False``), built once.
    """
    import tensorflow as tf

    from fcndata.batching import keras_inputs
    from fcndata.pipeline import build_pipeline

    images, labels, preds = [], [], []
    masked = config.model.masked
    for batch in build_pipeline(config, "eval", keras=False) if dataset is None else dataset:
        inputs, _, _ = keras_inputs(batch, masked_input=masked, ignore_label=config.data.ignore_label)
        pred = tf.argmax(model(inputs, training=False), -1).numpy()
        for i in range(len(pred)):
            # eval elements are whole images at origin (0, 0): source_shape is their extent
            h, w = (int(v) for v in batch["source_shape"][i])
            images.append(batch["image"][i].numpy()[:h, :w])
            label = batch["label"][i].numpy()[:h, :w]
            labels.append(label)
            preds.append(pred[i][:h, :w])
            if len(images) >= max_items:
                return images, labels, preds
    return images, labels, preds
