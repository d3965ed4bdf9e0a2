"""Tests for fcndata.preview: figures of batches, predictions and histories, and the CLI."""

from __future__ import annotations

import sys
import types

import matplotlib.image
import numpy as np
import pytest
import tensorflow as tf
from matplotlib.figure import Figure

import fcndata.testing as t
from fcndata import preview

SIZES = ((37, 53), (17, 17))  # padded to 40x64: small figures keep the suite fast
NAMES = ("background", "left", "right")


def padded_batch(sizes=SIZES, channels=3, dtype="uint8", weight=False, to=(40, 64)):
    """fcndata.testing elements padded by hand to one [B, *to] batch (roi 0, label 255 in padding)."""
    elements = [{k: v.numpy() for k, v in e.items()} for e in t.dataset(sizes, channels, 3, dtype)]
    height, width = to

    def pad(a, value):
        pads = [(0, height - a.shape[0]), (0, width - a.shape[1])] + [(0, 0)] * (a.ndim - 2)
        return np.pad(a, pads, constant_values=value)

    batch = {
        "image": np.stack([pad(e["image"], 0) for e in elements]),
        "label": np.stack([pad(e["label"], 255) for e in elements]),
        "roi": np.stack([pad(e["roi"], 0) for e in elements]),
    }
    for key in ("origin", "source_shape", "source_index", "path"):
        batch[key] = np.stack([e[key] for e in elements])
    if weight:
        rng = np.random.default_rng(0)
        batch["weight"] = rng.uniform(0.5, 3.0, batch["label"].shape).astype(np.float32)
    return batch


def legend_classes_drawn(path, num_classes: int = 3) -> set[int]:
    """The foreground class ids whose legend swatch colour appears in a written PNG.

    A swatch is the class colour at alpha min(1, a + 0.25) over the white figure; a class is
    drawn when some pixel is within 2/255 of that blend in every channel.
    """
    pixels = matplotlib.image.imread(path)[..., :3].reshape(-1, 3)
    found = set()
    for k in range(1, num_classes):
        r, g, b, a = preview.class_color(k)
        alpha = min(1.0, a + 0.25)
        swatch = np.array([r, g, b]) * alpha + (1 - alpha)
        if (np.abs(pixels - swatch).max(axis=1) <= 2 / 255).any():
            found.add(k)
    return found


def png_shape(fig: Figure, path) -> tuple[int, int]:
    fig.savefig(path)
    return matplotlib.image.imread(path).shape[:2]


def expected_shape(fig: Figure) -> tuple[int, int]:
    width, height = fig.get_size_inches() * fig.dpi
    return round(float(height)), round(float(width))


# ---------------------------------------------------------------------------- plot_batch


def test_padded_batch_has_padding():
    batch = padded_batch()
    assert batch["image"].shape == (2, 40, 64, 3)
    assert batch["roi"][0, 37:].sum() == 0 and batch["roi"][0, :37, :53].all()
    assert (batch["label"][1, 17:] == 255).all() and (batch["label"][1, :, 17:] == 255).all()


@pytest.mark.parametrize(
    "channels, dtype, weight",
    [
        (3, "uint8", False),
        (1, "uint8", True),
        (1, "uint16", False),
        (3, "float32", True),
        (4, "uint16", True),
    ],
)
def test_plot_batch_channels_and_dtypes(channels, dtype, weight):
    batch = padded_batch(channels=channels, dtype=dtype, weight=weight)
    fig = preview.plot_batch(batch, NAMES, dpi=40)
    assert isinstance(fig, Figure)
    # per row: image, label, roi, loss weight + the weight colorbar
    assert len(fig.axes) == 2 * 5
    titles = [ax.get_title() for ax in fig.axes[:4]]
    assert titles[0] == f"image ({dtype}" + (", ch 0-2)" if channels == 4 else ")")
    assert titles[3] == ("loss weight (weight × roi)" if weight else "loss weight (roi)")
    panel = fig.axes[0].get_images()[0].get_array()
    assert panel.shape == (40, 64, 3) and float(panel.max()) <= 1.0


@pytest.mark.parametrize("channels, dtype", [(3, "uint8"), (1, "uint16")])
def test_plot_batch_png_size(tmp_path, channels, dtype):
    fig = preview.plot_batch(
        padded_batch(channels=channels, dtype=dtype, weight=True), NAMES, dpi=40
    )
    assert png_shape(fig, tmp_path / "b.png") == expected_shape(fig)


def test_plot_batch_accepts_tf_tensors_and_annotates_padding():
    batch = {k: tf.constant(v) for k, v in padded_batch().items()}
    fig = preview.plot_batch(batch, NAMES, max_items=1, dpi=40)
    assert len(fig.axes) == 1 * 5
    roi_texts = [text.get_text() for text in fig.axes[2].texts]
    padding = 1 - 37 * 53 / (40 * 64)
    assert roi_texts == [f"{100 * padding:.1f} % padding"]
    row_title = fig.subfigs[0]._suptitle.get_text()
    assert (
        "testing/37x53#0" in row_title
        and "origin (y, x) = (0, 0)" in row_title
        and "source 37×53" in row_title
    )


def test_plot_batch_legend_lists_only_present_classes():
    batch = padded_batch(sizes=((17, 17),), to=(17, 17))
    batch["label"][0] = np.where(batch["label"][0] == 2, 0, batch["label"][0])  # class 2 gone
    fig = preview.plot_batch(batch, NAMES, dpi=40)
    legend = fig.subfigs[0].legends[0]
    names = [text.get_text().split("  ")[0] for text in legend.get_texts()]
    assert names == ["background", "left"]


def test_plot_batch_figure_size_scales_with_rows():
    batch = padded_batch()
    one = preview.plot_batch(batch, max_items=1, dpi=40)
    two = preview.plot_batch(batch, max_items=5, dpi=40)  # only 2 elements: 2 rows
    assert len(two.axes) == 2 * 5
    assert two.get_size_inches()[1] == pytest.approx(2 * one.get_size_inches()[1])
    assert two.get_size_inches()[0] == one.get_size_inches()[0]


def test_plot_batch_dpi_sets_pixel_size(tmp_path):
    batch = padded_batch(sizes=((17, 17),), to=(32, 32))
    small = png_shape(preview.plot_batch(batch, dpi=30), tmp_path / "a.png")
    large = png_shape(preview.plot_batch(batch, dpi=60), tmp_path / "b.png")
    assert abs(large[0] - 2 * small[0]) <= 1 and abs(large[1] - 2 * small[1]) <= 1


def test_plot_batch_unbatched_element():
    fig = preview.plot_batch(t.element(29, 41), NAMES, dpi=40)
    assert len(fig.axes) == 5


@pytest.mark.parametrize("masked_input", [False, True])
def test_plot_batch_to_keras_triplet(tmp_path, masked_input):
    batch = padded_batch(weight=True)
    image = batch["image"].astype(np.float32) / 255.0
    roi = batch["roi"].astype(np.float32)
    inputs = {"image": image, "roi": roi[..., None]} if masked_input else image
    triplet = (
        tf.constant(inputs) if not masked_input else inputs,
        batch["label"].astype(np.int32),
        roi * batch["weight"],
    )
    fig = preview.plot_batch(triplet, NAMES, dpi=40)
    assert len(fig.axes) == 2 * 4  # image, label, sample weight + colorbar
    assert [ax.get_title() for ax in fig.axes[:3]] == [
        "model input (float32)",
        "label",
        "sample weight",
    ]
    # inputs already in [0, 1] are shown as the model sees them, not stretched
    assert fig.axes[0].get_images()[0].get_array().max() == pytest.approx(image[0].max())
    # with {"image", "roi"} inputs the padding is hatched on the label (to_keras labels it 0)
    assert bool(fig.axes[1].collections) == masked_input
    if masked_input:
        assert png_shape(fig, tmp_path / "k.png") == expected_shape(fig)


def test_plot_batch_pair_without_sample_weight():
    batch = padded_batch()
    fig = preview.plot_batch((batch["image"], batch["label"]), dpi=40)
    assert len(fig.axes) == 2 * 2


def test_plot_batch_errors():
    batch = padded_batch()
    with pytest.raises(ValueError, match=r"missing keys \['roi'\].*Received: keys="):
        preview.plot_batch({k: v for k, v in batch.items() if k != "roi"})
    with pytest.raises(
        ValueError, match=r"max_items must be a positive int. Received: max_items=0"
    ):
        preview.plot_batch(batch, max_items=0)
    with pytest.raises(
        ValueError, match=r"label must be \[B, H, W\].*Received: label.shape=\(2, 40, 63\)"
    ):
        preview.plot_batch(dict(batch, label=batch["label"][..., :63]))
    with pytest.raises(
        ValueError, match=r"\(inputs, label, sample_weight\).*Received: len\(batch\)=4"
    ):
        preview.plot_batch((1, 2, 3, 4))
    with pytest.raises(TypeError, match=r"Received: type\(batch\)=int"):
        preview.plot_batch(3)


def test_display_image_rescaling():
    u8 = np.array([[[0], [128]]], np.uint8)
    assert preview.display_image(u8)[0, :, 0].tolist() == pytest.approx([0.0, 128 / 255])
    f = np.array([[[2.0], [4.0], [100.0]]], np.float32)
    valid = np.array([[True, True, False]])
    assert preview.display_image(f, valid)[0, :, 0].tolist() == [
        0.0,
        1.0,
        1.0,
    ]  # padding ignored, clipped
    unit = np.array([[[0.25], [0.5]]], np.float32)
    assert preview.display_image(unit, unit_range=True)[0, :, 0].tolist() == [0.25, 0.5]
    assert preview.display_image(np.zeros([2, 3, 4], np.uint16)).shape == (2, 3, 3)


def test_label_overlay_colours():
    label = np.array([[0, 1, 255]])
    rgba = preview.label_overlay(label)
    assert rgba[0, 0, 3] == 0.0  # background clear
    assert rgba[0, 1, 3] > 0.0 and rgba[0, 2, 3] > rgba[0, 1, 3]
    assert tuple(rgba[0, 2]) == pytest.approx(preview.class_color(255))
    red = preview.label_overlay(label, palette=[(0, 0, 0), (255, 0, 0)])[0, 1]
    assert tuple(red[:3]) == (1.0, 0.0, 0.0)


def test_pad_elements():
    batch = preview.pad_elements([t.element(5, 7), t.element(3, 9, source_index=1)])
    assert batch["image"].shape == (2, 5, 9, 3)
    assert batch["label"][1, 3:].tolist() == [[255] * 9] * 2
    assert batch["roi"].sum() == 5 * 7 + 3 * 9
    assert batch["path"].tolist() == [b"testing/5x7#0", b"testing/3x9#1"]


# ---------------------------------------------------------------------------- save_batch_preview


def test_save_batch_preview_batched_dataset(tmp_path):
    ds = tf.data.Dataset.from_tensors(padded_batch(weight=True)).repeat(2)
    out = preview.save_batch_preview(ds, tmp_path / "sub" / "p.png", NAMES, max_items=2, dpi=40)
    assert out == str(tmp_path / "sub" / "p.png")
    assert legend_classes_drawn(out) == {1, 2}  # the stripes of fcndata.testing: classes 0, 1, 2


def test_save_batch_preview_unbatched_dataset(tmp_path):
    out = preview.save_batch_preview(t.dataset(SIZES), tmp_path / "u.png", max_items=2, dpi=40)
    assert legend_classes_drawn(out) == {1, 2}


def test_save_batch_preview_empty_dataset(tmp_path):
    with pytest.raises(ValueError, match="the dataset is empty"):
        preview.save_batch_preview(t.dataset(SIZES).take(0), tmp_path / "e.png")


# ---------------------------------------------------------------------------- predictions, history


def test_plot_predictions_different_sizes(tmp_path):
    sizes = ((37, 53), (64, 31))
    images = [t.coordinate_image(h, w) for h, w in sizes]
    labels = [t.stripe_label(h, w).numpy() for h, w in sizes]
    predictions = [np.roll(label, 3, axis=1) for label in labels]
    rois = [np.ones(s, np.uint8) for s in sizes]
    rois[1][:, 25:] = 0
    fig = preview.plot_predictions(
        images, labels, predictions, NAMES, rois=rois, titles=["a.png", "b.png"], dpi=40
    )
    assert len(fig.axes) == 2 * 3
    assert fig.subfigs[1]._suptitle.get_text() == "[1]    b.png"
    legend = [text.get_text() for text in fig.subfigs[1].legends[0].get_texts()]
    valid = rois[1].astype(bool)
    gt = 100 * np.mean(labels[1][valid] == 2)
    pred = 100 * np.mean(predictions[1][valid] == 2)
    assert legend[2] == f"right  {gt:.1f} / {pred:.1f} %"
    assert (
        fig.axes[2].get_title()
        == f"prediction: {100 * np.mean(predictions[0] == labels[0]):.1f} % correct"
    )
    valid = rois[1].astype(bool)
    assert (
        fig.axes[5].get_title()
        == f"prediction: {100 * np.mean(predictions[1][valid] == labels[1][valid]):.1f} % correct"
    )
    assert png_shape(fig, tmp_path / "pred.png") == expected_shape(fig)


def test_plot_predictions_batched_scores():
    labels = np.stack([t.stripe_label(17, 17).numpy()] * 3)
    scores = np.eye(3, dtype=np.float32)[labels]  # [B, H, W, K] one-hot
    fig = preview.plot_predictions(
        np.zeros([3, 17, 17, 1], np.float32), labels, scores, NAMES, max_items=2, dpi=40
    )
    assert len(fig.axes) == 2 * 3
    assert fig.axes[2].get_title() == "prediction: 100.0 % correct"
    one = preview.plot_predictions(t.coordinate_image(17, 17), labels[0], scores[0], NAMES, dpi=40)
    assert len(one.axes) == 3


def test_plot_predictions_errors():
    label = t.stripe_label(17, 17).numpy()
    with pytest.raises(ValueError, match=r"same length.*Received: lengths="):
        preview.plot_predictions([label[..., None]] * 2, [label], [label], NAMES)
    with pytest.raises(ValueError, match=r"same height and width.*prediction.shape=\(17, 16\)"):
        preview.plot_predictions([label[..., None]], [label], [label[:, :16]], NAMES)


def test_plot_history(tmp_path):
    history = {
        "loss": [1.0, 0.7, 0.5],
        "val_loss": [1.1, 0.6, 0.65],
        "mean_iou": [0.2, 0.4, 0.5],
        "val_mean_iou": [0.2, 0.45, 0.44],
        "pixel_accuracy": [0.5, 0.6, 0.7],
    }
    fig = preview.plot_history(history, dpi=40)
    assert [ax.get_title() for ax in fig.axes] == ["loss", "mean iou", "pixel accuracy"]
    loss_legend = [text.get_text() for text in fig.axes[0].get_legend().get_texts()]
    assert loss_legend == ["train", "validation", "best 0.6 @ 2"]
    assert png_shape(fig, tmp_path / "h.png") == expected_shape(fig)
    keras_like = types.SimpleNamespace(history={"val_loss": [1.0]})
    assert [ax.get_title() for ax in preview.plot_history(keras_like).axes] == ["loss"]


def test_plot_history_errors():
    with pytest.raises(ValueError, match=r"no values to plot.*Received: keys=\['loss'\]"):
        preview.plot_history({"loss": []})
    with pytest.raises(TypeError, match=r"Received: type\(history\)=list"):
        preview.plot_history([1.0, 2.0])


def test_figure_renders_itself_for_notebooks():
    png = preview.plot_history({"loss": [1.0, 0.5]}, dpi=30)._repr_png_()
    assert png[:8] == b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------------------- CLI


def test_cli_with_stub_pipeline(tmp_path, monkeypatch, capsys):
    calls = []

    def build_pipeline(config, mode="train", *, keras=True):
        calls.append((config.data.num_classes, mode, keras))
        return tf.data.Dataset.from_tensors(padded_batch(weight=True))

    monkeypatch.setitem(
        sys.modules, "fcndata.pipeline", types.SimpleNamespace(build_pipeline=build_pipeline)
    )
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: shapes, num_classes: 3, class_names: [bg, a, b]}\n")
    out = tmp_path / "preview.png"
    argv = [
        "--config",
        str(recipe),
        "--out",
        str(out),
        "--mode",
        "eval",
        "--max-items",
        "2",
        "--dpi",
        "40",
        "--set",
        "data.seed=3",
    ]
    assert preview.main(argv) == 0
    assert calls == [(3, "eval", False)]
    assert capsys.readouterr().out.strip() == str(out)
    assert legend_classes_drawn(out) == {1, 2}


def test_cli_bad_config(tmp_path, capsys):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {sorce: shapes}\n")
    assert preview.main(["--config", str(recipe), "--out", str(tmp_path / "p.png")]) == 2
    assert (
        "unknown key 'sorce' in section 'data'; did you mean 'source'?" in capsys.readouterr().err
    )


def test_cli_end_to_end_on_shapes(tmp_path, capsys):
    out = tmp_path / "shapes.png"
    argv = [
        "--out",
        str(out),
        "--mode",
        "eval",
        "--max-items",
        "2",
        "--dpi",
        "40",
        "--set",
        "data.source=shapes",
        "--set",
        "data.val_num_images=2",
        "--set",
        "data.min_size=33",
        "--set",
        "data.max_size=41",
        "--set",
        "batching.batch_size=2",
    ]
    assert preview.main(argv) == 0
    assert capsys.readouterr().out.strip() == str(out)
    assert legend_classes_drawn(out)  # shapes on a background: at least one shape class is drawn
