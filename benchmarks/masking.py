"""Does `model.masked` keep padding out of predictions? Measured, not claimed.

Trains the brain full-image recipe twice (masked false / true, same seed and data), then
predicts every validation slice (a) alone, padded only to the next multiple of 32, and
(b) padded inside a batch whose largest element is bigger (here: a canvas 96 pixels taller
and wider, as a batch with a larger slice would be). On the slice's real pixels it reports
the mean absolute difference of the class probabilities, the share of pixels whose predicted
class changes, and the mean IoU of both.

    python benchmarks/masking.py [--quick]
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def compare(model, config, extra: int = 96) -> dict:
    """Predictions of each validation image alone vs padded by `extra` more pixels."""
    import tensorflow as tf

    from fcndata.metrics import confusion_matrix, mean_iou
    from fcndata.pipeline import build_pipeline

    cfg = config.replace(batching=config.batching.__class__(batch_size=1, pad_to_multiple=32, bucket_by="none"))
    k = config.data.num_classes
    diffs, changed, total = [], 0, 0
    conf_alone, conf_batch = np.zeros((k, k), np.int64), np.zeros((k, k), np.int64)
    for batch in build_pipeline(cfg, "eval", keras=False):
        h, w = (int(v) for v in batch["source_shape"][0])
        image = tf.cast(batch["image"], tf.float32) / 255.0
        H, W = image.shape[1], image.shape[2]
        alone_in = image
        big_in = tf.pad(image, [[0, 0], [0, extra], [0, extra], [0, 0]])
        # roi = the slice's own extent (1 on every real pixel, labeled or not)
        alone_roi = tf.pad(tf.ones([1, h, w, 1]), [[0, 0], [0, H - h], [0, W - w], [0, 0]])
        big_roi = tf.pad(alone_roi, [[0, 0], [0, extra], [0, extra], [0, 0]])
        if config.model.masked:
            alone_in, big_in = {"image": alone_in, "roi": alone_roi}, {"image": big_in, "roi": big_roi}
        p_alone = tf.nn.softmax(model(alone_in, training=False))[0, :h, :w].numpy()
        p_big = tf.nn.softmax(model(big_in, training=False))[0, :h, :w].numpy()
        label = batch["label"][0, :h, :w].numpy()
        diffs.append(np.abs(p_alone - p_big).mean())
        a, b = p_alone.argmax(-1), p_big.argmax(-1)
        changed += int((a != b).sum())
        total += a.size
        conf_alone += confusion_matrix(label, a, k, ignore_label=config.data.ignore_label)
        conf_batch += confusion_matrix(label, b, k, ignore_label=config.data.ignore_label)
    return {
        "mean_abs_prob_diff": float(np.mean(diffs)),
        "changed_pixels_pct": 100.0 * changed / max(total, 1),
        "mean_iou_alone": mean_iou(conf_alone),
        "mean_iou_padded": mean_iou(conf_batch),
    }


def main(quick: bool = False) -> dict:
    import keras

    import fcndata.losses  # noqa: F401
    import fcndata.metrics  # noqa: F401
    import fcndata.models  # noqa: F401
    from fcndata.config import load_config
    from fcndata.train import train

    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for masked in (False, True):
            overrides = [f"model.masked={str(masked).lower()}", f"train.run_dir={tmp}", f"train.name=m{int(masked)}",
                         "train.verbose=0"]
            if quick:
                overrides += ["train.epochs=2", "train.steps_per_epoch=3"]
            else:
                overrides += ["train.epochs=12"]
            cfg = load_config(ROOT / "pipelines" / "brain_fullimage.yaml", overrides)
            summary = train(cfg)
            model = keras.models.load_model(Path(summary["run_dir"]) / "model.keras", compile=False)
            results[masked] = compare(model, cfg)
    print(f"{'masked':>7} {'|p_alone - p_padded|':>21} {'pixels changed':>15} {'mIoU alone':>11} {'mIoU padded':>12}")
    for masked, r in results.items():
        print(f"{str(masked):>7} {r['mean_abs_prob_diff']:21.5f} {r['changed_pixels_pct']:14.3f}% "
              f"{r['mean_iou_alone']:11.4f} {r['mean_iou_padded']:12.4f}")
    return results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true")
    main(parser.parse_args().quick)
