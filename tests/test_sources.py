"""Tests for fcndata.sources: decode paths, validation messages, skip reports, round trips."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import tensorflow as tf
from conftest import H, W, rgb_image, stripes, write, write_raw_tiff
from PIL import Image

import fcndata.testing as t
from fcndata import elements as E
from fcndata import sources as S
from fcndata.config import DataConfig
from fcndata.decode import convert_channels
from fcndata.sources import arrays

VOC = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]


def one(ds):
    (e,) = list(ds)
    return {k: v.numpy() for k, v in e.items()}


def make_pair(tmp_path, image_name, image, mask=None, mask_name=None):
    (tmp_path / "images").mkdir(exist_ok=True)
    (tmp_path / "masks").mkdir(exist_ok=True)
    path = tmp_path / "images" / image_name
    if isinstance(image, bytes):
        path.write_bytes(image)
    else:
        write(path, image)
    stem = path.stem
    mpath = tmp_path / "masks" / (mask_name or f"{stem}.png")
    write(mpath, stripes(*np.asarray(image).shape[:2]) if mask is None else mask)
    return str(path)


def open_folder(tmp_path, channels=3, num_classes=3, glob="images/*", **kw):
    return S.from_folder(glob, "masks/{stem}.png", channels=channels, num_classes=num_classes, root=str(tmp_path), **kw)


# ---------------------------------------------------------------------------- decode paths


@pytest.mark.parametrize("channels_in", [1, 3, 4])
def test_lossless_formats_decode_exactly(tmp_path, channels_in):
    exts = [".png", ".tif"] + ([".bmp"] if channels_in != 4 else [])  # TF reads 4-channel BMP as 3
    images = {}
    for i, ext in enumerate(exts):
        image = t.random_image(H, W + i, channels_in, seed=i)
        make_pair(tmp_path, f"{i}{ext}", image[..., 0] if channels_in == 1 else image)
        images[f"{i}{ext}"] = image
    out = list(open_folder(tmp_path, channels=channels_in))
    assert len(out) == len(exts)
    for e, (name, image) in zip(out, images.items()):
        e = {k: v.numpy() for k, v in e.items()}
        assert e["path"].decode().endswith(name)
        np.testing.assert_array_equal(e["image"], image)
        np.testing.assert_array_equal(e["label"], stripes(H, image.shape[1]))
        assert e["image"].dtype == np.uint8 and e["roi"].all() and e["origin"].tolist() == [0, 0]
        assert e["source_shape"].tolist() == list(image.shape[:2])


def test_png16_and_tiff16_keep_uint16(tmp_path):
    image = (np.arange(H * W).reshape(H, W) * 300).astype(np.uint16)
    make_pair(tmp_path, "a.png", image)
    make_pair(tmp_path, "b.tif", image + 1)
    ds = open_folder(tmp_path, channels=1)
    E.check_spec(ds)
    assert ds.element_spec["image"].dtype == tf.uint16
    a, b = list(ds)
    np.testing.assert_array_equal(a["image"][..., 0], image)
    np.testing.assert_array_equal(b["image"][..., 0], image + 1)


def test_float_tiff(tmp_path):
    image = np.random.default_rng(0).random((H, W)).astype(np.float32)
    make_pair(tmp_path, "a.tiff", image)
    e = one(open_folder(tmp_path, channels=3))
    assert e["image"].dtype == np.float32 and e["image"].shape == (H, W, 3)
    np.testing.assert_array_equal(e["image"][..., 2], image)


def test_jpeg_and_gif(tmp_path):
    image = np.zeros((H, W, 3), np.uint8)
    image[:, :8] = (200, 30, 40)
    make_pair(tmp_path, "a.jpg", image)
    (tmp_path / "images").mkdir(exist_ok=True)
    Image.fromarray(image).save(tmp_path / "images" / "b.gif")
    write(tmp_path / "masks" / "b.png", stripes())
    a, b = list(open_folder(tmp_path))
    assert np.abs(a["image"].numpy().astype(int) - image).mean() < 4  # lossy
    np.testing.assert_array_equal(b["image"], image)  # two colours survive the GIF palette


def test_channel_conversions(tmp_path):
    rgba = t.random_image(H, W, 4, seed=5)
    make_pair(tmp_path, "a.png", rgba)
    make_pair(tmp_path, "b.png", rgba[..., 0])
    a, b = list(open_folder(tmp_path, channels=3))
    np.testing.assert_array_equal(a["image"], rgba[..., :3])  # RGBA -> RGB drops alpha
    np.testing.assert_array_equal(b["image"], np.repeat(rgba[..., :1], 3, -1))  # gray -> RGB repeats
    gray = one(open_folder(tmp_path, channels=1, glob="images/a.png"))["image"][..., 0]
    expected = np.round(rgba[..., :3].astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    np.testing.assert_array_equal(gray, expected.astype(np.uint8))  # RGB -> gray luminance
    four = one(open_folder(tmp_path, channels=4, glob="images/b.png"))["image"]
    assert (four[..., 3] == 255).all()  # missing alpha is opaque


def test_convert_channels_in_graph_and_eager():
    img = tf.constant(t.random_image(3, 4, 3))
    eager, _ = convert_channels(img, 4)
    graph = next(iter(tf.data.Dataset.from_tensors(img).map(lambda x: convert_channels(x, 4)[0])))
    np.testing.assert_array_equal(eager, graph)
    _, ok = convert_channels(tf.zeros([2, 2, 5], tf.uint8), 3)
    assert not bool(ok)


def test_palette_masks(tmp_path):
    labels = stripes()
    colours = np.array(VOC, np.uint8)[labels]
    colours[0, 0] = (224, 224, 192)
    pal = Image.fromarray(labels.astype(np.uint8), mode="P")
    pal.putpalette([v for c in VOC for v in c] + [0] * (768 - 9))
    make_pair(tmp_path, "a.png", rgb_image(), mask=colours)
    make_pair(tmp_path, "b.png", rgb_image())
    pal.save(tmp_path / "masks" / "b.png")  # a real palette ("P" mode) PNG, VOC style
    a, b = list(open_folder(tmp_path, palette=VOC, ignore_color=(224, 224, 192)))
    expected = labels.copy()
    expected[0, 0] = 255
    np.testing.assert_array_equal(a["label"], expected)
    assert a["roi"].numpy()[0, 0] == 0 and a["roi"].numpy().sum() == H * W - 1
    np.testing.assert_array_equal(b["label"], labels)


# ---------------------------------------------------------------------------- bad inputs


def test_construction_errors(tmp_path, folder):
    with pytest.raises(ValueError, match=r"no files match the image glob 'nope/\*.png'.*data.root"):
        S.from_folder("nope/*.png", "masks/{stem}.png", channels=3, num_classes=3, root=str(folder))
    with pytest.raises(ValueError, match=r"must contain '\{stem\}'"):
        S.from_folder("images/*.png", "masks/x.png", channels=3, num_classes=3, root=str(folder))
    (folder / "images" / "d.png").write_bytes((folder / "images" / "a.png").read_bytes())
    (folder / "masks" / "e.png").write_bytes((folder / "masks" / "a.png").read_bytes())
    with pytest.raises(ValueError, match=r"(?s)2 file\(s\) cannot be paired.*d.png: image without mask: "
                       r"expected .*masks/d.png.*e.png: mask without image.*on_error=skip"):
        S.from_folder("images/*.png", "masks/{stem}.png", channels=3, num_classes=3, root=str(folder))
    report = S.SkipReport()
    ds = S.from_folder("images/*.png", "masks/{stem}.png", channels=3, num_classes=3, root=str(folder),
                       on_error="skip", report=report)
    assert len(list(ds)) == 3
    assert [(p.rsplit("/", 1)[1], r.split(":")[0]) for p, r in report.skipped] == [
        ("d.png", "image without mask"), ("e.png", "mask without image")]


def bad_cases(tmp_path):
    """(file name, expected message regex) for every per-element error (those found in the graph; the
    header checks at construction — bit depth, JPEG masks, size limit — are in test_bad_input.py)."""
    good = rgb_image()
    png = (tmp_path / "ok.png")
    write(png, good)
    data = png.read_bytes()
    make_pair(tmp_path, "a_ok.png", good)
    make_pair(tmp_path, "b_truncated.png", data[: len(data) // 2])
    make_pair(tmp_path, "c_empty.png", b"")
    make_pair(tmp_path, "d_garbage.jpg", b"\xff\xd8 this is not really a jpeg \xff\xd9")
    make_pair(tmp_path, "e_size.png", good, mask=stripes(H - 1, W))
    bad_label = stripes()
    bad_label[3, 4] = 7
    make_pair(tmp_path, "f_range.png", good, mask=bad_label)
    make_pair(tmp_path, "h_colour_mask.png", good, mask=np.array(VOC, np.uint8)[stripes()])
    return {
        "b_truncated": r"image .*b_truncated.png is truncated \(the PNG IEND chunk or JPEG end marker is missing\)",
        "c_empty": r"image .*c_empty.png is an empty file \(0 bytes\)",
        "d_garbage": r"could not read or decode image .*d_garbage.jpg \(unreadable, corrupt",
        "e_size": r"image .*e_size.png is 13x17 \(HxW\) but its mask .*masks/e_size.png is 12x17; .*same height "
                  r"and width.*Received: image_shape=13x17, mask_shape=12x17",
        "f_range": r"mask .*f_range.png has label values outside \[0, 3\) that are not ignore_label=255.*"
                   r"Received: label_value=7",
        "h_colour_mask": r"mask .*h_colour_mask.png has 3 channel\(s\); expected 1 channel of class ids; for colour "
                         r"masks set data.palette",
    }


def test_every_bad_input_has_its_own_message_under_raise(tmp_path):
    cases = bad_cases(tmp_path)
    # One dataset for all cases: a tf.data iterator stays usable after an element's error,
    # so each bad file raises its own InvalidArgumentError in turn.
    iterator = iter(open_folder(tmp_path))
    assert next(iterator)["path"].numpy().decode().endswith("a_ok.png")
    for pattern in cases.values():
        with pytest.raises(tf.errors.InvalidArgumentError, match=pattern):
            next(iterator)
    with pytest.raises(StopIteration):
        next(iterator)


def test_skip_counts_and_reports_every_file(tmp_path, caplog):
    cases = bad_cases(tmp_path)
    report = S.SkipReport("folder source")
    ds = open_folder(tmp_path, on_error="skip", report=report)
    with caplog.at_level(logging.WARNING, logger="fcndata"):
        kept = [e["path"].numpy().decode().rsplit("/", 1)[1] for e in ds]
    assert kept == ["a_ok.png"]
    assert report.count == len(cases) and report.passes == 1
    for (path, reason), (stem, pattern) in zip(report.skipped, cases.items()):
        assert stem in path
        assert tf.constant(reason).numpy().decode() and __import__("re").search(pattern, reason), (reason, pattern)
    assert f"skipped {len(cases)} element(s)" in caplog.text and "b_truncated.png" in caplog.text
    list(ds)  # a second pass reports again, not twice as many
    assert report.count == len(cases) and report.passes == 2


def test_16bit_mask_values_do_not_wrap(tmp_path):
    mask = stripes().astype(np.uint16)
    mask[2, 2] = 257  # 257 % 256 == 1 would be a valid class if it wrapped to uint8
    make_pair(tmp_path, "a.png", rgb_image(), mask=mask)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"Received: label_value=257"):
        list(open_folder(tmp_path))


def test_nan_in_float_image(tmp_path):
    image = np.ones((H, W), np.float32)
    image[2, 3] = np.nan
    make_pair(tmp_path, "a.tif", image)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a.tif has NaN or inf pixels.*non_finite_pixels=1"):
        list(open_folder(tmp_path, channels=1))
    report = S.SkipReport()
    assert list(open_folder(tmp_path, channels=1, on_error="skip", report=report)) == [] and report.count == 1


def test_unmatched_palette_colour_and_five_channel_tiff(tmp_path):
    colours = np.array(VOC, np.uint8)[stripes()]
    colours[1, 1] = (9, 8, 7)
    make_pair(tmp_path, "a.png", rgb_image(), mask=colours)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"a.png has 1 pixel\(s\) of colour \(9, 8, 7\) that is not "
                       r"in data.palette"):
        list(open_folder(tmp_path, palette=VOC))
    write_raw_tiff(tmp_path / "images" / "b.tif", t.random_image(H, W, 5))
    write(tmp_path / "masks" / "b.png", stripes())
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"b.tif .*or a TIFF with more than 4 channels"):
        list(open_folder(tmp_path, glob="images/b.tif"))


def test_validate_stage_channels_and_raise():
    ds = S.from_arrays([t.random_image(5, 7, 4)], [np.zeros((5, 7), np.uint8)], num_classes=2)
    e = one(ds.apply(S.Validate(num_classes=2, channels=1)))
    assert e["image"].shape == (5, 7, 1)
    five = S.from_arrays([t.random_image(5, 7, 5)], [np.zeros((5, 7), np.uint8)], num_classes=2, paths=["x5"])
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"image x5 has 5 channels, which cannot be converted to "
                       r"channels=3.*Received: channels=5"):
        list(five.apply(S.Validate(num_classes=2, channels=3)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask testing/5x7#0 has label values outside \[0, 2\)"):
        list(t.dataset([(5, 7)]).apply(S.Validate(num_classes=2)))
    with pytest.raises(ValueError, match=r"on_error must be 'raise' or 'skip'. Received: on_error='drop'"):
        S.Validate(num_classes=2, on_error="drop")


# ---------------------------------------------------------------------------- arrays, TFRecord, TFDS


def test_from_arrays_sizes_and_errors():
    imgs = [t.random_image(h, w, 3, i) for i, (h, w) in enumerate(t.ODD_SIZES)]
    labs = [stripes(h, w) for h, w in t.ODD_SIZES]
    ds = S.from_arrays(imgs, labs, num_classes=3)
    E.check_spec(ds)
    out = list(ds)
    for i, e in enumerate(out):
        np.testing.assert_array_equal(e["image"], imgs[i])
        assert int(e["source_index"]) == i
    with pytest.raises(ValueError, match=r"image arrays/1 \(index 1\) is 29x41 but its label is 29x40"):
        S.from_arrays(imgs, labs[:1] + [labs[1][:, :40]] + labs[2:], num_classes=3)
    with pytest.raises(ValueError, match=r"label arrays/0 \(index 0\) has values outside \[0, 2\)"):
        S.from_arrays(imgs, labs, num_classes=2)
    bad = np.zeros((3, 4), np.float32)
    bad[0, 0] = np.inf
    with pytest.raises(ValueError, match="has NaN or inf pixels"):
        S.from_arrays([bad], [np.zeros((3, 4), np.uint8)], num_classes=2)


def test_from_arrays_one_copy_roi_and_large_sources(monkeypatch):
    # 8x8 RGB is 192 bytes (a view of the buffer), 5x7 is not a multiple of 64 (sliced out).
    imgs = [t.random_image(8, 8, 3, 0), t.random_image(5, 7, 3, 1)]
    labs = [stripes(8, 8), np.full((5, 7), 255, np.int64)]
    labs[0][0, :3] = 255
    ds = S.from_arrays(imgs, labs, num_classes=3)
    expected = [a.copy() for a in imgs]
    imgs[0][:] = 0  # the source holds its own copy: changing the arrays later changes nothing
    for e, image, label in zip(ds, expected, labs, strict=True):
        np.testing.assert_array_equal(e["image"], image)
        np.testing.assert_array_equal(e["label"], label.astype(np.uint8))
        np.testing.assert_array_equal(e["roi"], (label != 255).astype(np.uint8))
        assert e["roi"].dtype == tf.uint8
    assert ds.options().experimental_optimization.apply_default_optimizations is None
    # Large sources turn tf.data's default rewrites off (they would copy the arrays per iterator).
    monkeypatch.setattr(arrays, "LARGE_ARRAYS", 100)
    big = S.from_arrays(imgs, labs, num_classes=3)
    assert big.options().experimental_optimization.apply_default_optimizations is False
    assert [int(e["source_index"]) for e in big] == [0, 1]
    np.testing.assert_array_equal(one(big.take(1))["image"], np.zeros((8, 8, 3), np.uint8))


@pytest.mark.parametrize("label_dtype", [np.uint8, np.int32])
def test_from_arrays_roi_when_every_pixel_is_labeled(label_dtype):
    # No ignore_label anywhere: each roi is a view of one shared plane of ones; it must still
    # be each element's own size, static when all share one, and all ones.
    sizes = [(8, 8), (5, 7), (9, 3)]
    labs = [np.arange(h * w).reshape(h, w).astype(label_dtype) % 3 for h, w in sizes]
    num_classes = 3 if label_dtype == np.uint8 else 300  # int32 labels above 255 classes
    ds = S.from_arrays([t.random_image(h, w, 3, i) for i, (h, w) in enumerate(sizes)], labs, num_classes=num_classes,
                       ignore_label=-1 if label_dtype == np.int32 else 255)
    for e, (h, w) in zip(ds, sizes, strict=True):
        assert e["roi"].dtype == tf.uint8 and e["roi"].shape == (h, w)
        np.testing.assert_array_equal(e["roi"], np.ones((h, w), np.uint8))
    same = S.from_arrays([t.random_image(6, 4, 3, i) for i in range(2)], [np.zeros((6, 4), np.uint8)] * 2, num_classes=2)
    assert same.element_spec["roi"].shape.as_list() == [6, 4]
    assert [int(e["roi"].numpy().sum()) for e in same] == [24, 24]


def test_tfrecord_round_trip_bit_exact(tmp_path):
    rng = np.random.default_rng(0)
    for dtype in (np.uint8, np.uint16, np.float32):
        imgs = [(rng.random((h, w, 2)) * 1000).astype(dtype) for h, w in t.ODD_SIZES]
        labs = [rng.integers(0, 300, (h, w)).astype(np.int32) for h, w in t.ODD_SIZES]
        labs[0][0, 0] = 255
        src = S.from_arrays(imgs, labs, num_classes=300, ignore_label=-1, paths=[f"p{i}" for i in range(4)])
        src = src.map(lambda e: {**e, "weight": tf.cast(e["label"], tf.float32) / 7.0})
        for shards in [1 if dtype is np.uint8 else 3]:
            files = S.write_tfrecords(src, str(tmp_path / f"{dtype.__name__}{shards}.tfrecord"), num_shards=shards)
            assert len(files) == shards
            back = S.from_tfrecords(str(tmp_path / f"{dtype.__name__}{shards}*.tfrecord"))
            assert back.element_spec == src.element_spec
            for a, b in zip(src, back, strict=True):
                for k in a:
                    x, y = a[k].numpy(), b[k].numpy()
                    assert a[k].dtype == b[k].dtype and np.shape(x) == np.shape(y)
                    assert np.asarray(x).tobytes() == np.asarray(y).tobytes(), k  # bit for bit (NaN-safe)
    with pytest.raises(ValueError, match=r"tfrecord source: no files match '.*none\*' \(resolved to"):
        S.from_tfrecords(str(tmp_path / "none*"))


def test_load_source_tfrecord_and_folder(tmp_path, folder):
    data = DataConfig(source="folder", images="images/*.png", masks="masks/{stem}.png", root=str(folder))
    ds = S.load_source(data)
    assert [e["image"].shape[:2] for e in ds] == [(H, W), (11, 9), (15, 12)]
    files = S.write_tfrecords(ds, str(tmp_path / "rec" / "train.tfrecord"))
    cfg = DataConfig(source="tfrecord", tfrecords="rec/*.tfrecord", root=str(tmp_path), channels=1)
    back = list(S.load_source(cfg))
    assert len(back) == 3 and back[0]["image"].shape == (H, W, 1) and files
    with pytest.raises(ValueError, match=r"data.val_images and data.val_masks must both be set"):
        S.load_source(data, "validation")
    assert not S.has_split(data, "validation")


def test_tfds_prepared_locally(tmp_path):
    import tensorflow_datasets as tfds

    class TinySeg(tfds.core.GeneratorBasedBuilder):
        VERSION = tfds.core.Version("1.0.0")

        def _info(self):
            return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(None, None, 3)),
                "segmentation_mask": tfds.features.Image(shape=(None, None, 1)),
            }))

        def _split_generators(self, dl_manager):
            return {"train": self._generate_examples(3)}

        def _generate_examples(self, n):
            for i in range(n):
                h, w = 9 + i, 7 + 2 * i
                yield i, {"image": rgb_image(h, w, seed=i), "segmentation_mask": stripes(h, w)[..., None]}

    with pytest.raises(ValueError, match=r"not prepared in .* fcndata never downloads.*tfds build tiny_seg --data_dir"):
        S.from_tfds("tiny_seg", "train", str(tmp_path / "empty"))
    TinySeg(data_dir=str(tmp_path)).download_and_prepare()
    data = DataConfig(source="tfds", tfds_name="tiny_seg", tfds_data_dir=str(tmp_path), tfds_train_split="train")
    ds = S.load_source(data)
    E.check_spec(ds)
    out = list(ds)
    assert [tuple(e["image"].shape) for e in out] == [(9, 7, 3), (10, 9, 3), (11, 11, 3)]
    assert out[1]["path"].numpy() == b"tfds/tiny_seg/train/1"
    np.testing.assert_array_equal(out[2]["label"], stripes(11, 11))


def test_a_tfds_source_with_an_empty_validation_split_has_no_validation_for_every_command(tmp_path, capsys):
    # One answer (has_split) for train, inspect and preview; nothing is read from TFDS to give it.
    from fcndata.config import load_config
    from fcndata.inspect import main as inspect_main
    from fcndata.preview import main as preview_main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: tfds, tfds_name: tiny_seg, tfds_data_dir: tfds, tfds_val_split: '', num_classes: 3}\n")
    data = load_config(recipe).data
    assert S.has_split(data, "train")
    assert not S.has_split(data, "validation") and not data.has_validation
    assert inspect_main(["--config", str(recipe), "--split", "validation"]) == 2
    assert f"error: {recipe}: the recipe has no validation data" in capsys.readouterr().err
    assert preview_main(["--config", str(recipe), "--mode", "eval", "--out", str(tmp_path / "p.png")]) == 2
    assert f"error: {recipe}: the recipe has no validation data" in capsys.readouterr().err
    named = DataConfig(source="tfds", tfds_name="tiny_seg")  # the default split name, "validation"
    assert S.has_split(named, "validation") and named.has_validation


def test_inspect_command_names_an_empty_glob_without_a_traceback(tmp_path, capsys):
    from fcndata.inspect import main

    recipe = tmp_path / "r.yaml"
    recipe.write_text("data: {source: folder, images: 'nothing/*.png', masks: 'm/{stem}.png', num_classes: 2}\n")
    assert main(["--config", str(recipe)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: folder source: no files match the image glob 'nothing/*.png'")


_SERVICE = """
import sys, tensorflow as tf
dispatcher = tf.data.experimental.service.DispatchServer()
address = dispatcher.target.removeprefix("grpc://")
worker = tf.data.experimental.service.WorkerServer(tf.data.experimental.service.WorkerConfig(dispatcher_address=address))
print(dispatcher.target, flush=True)
sys.stdin.read()  # serve until the test closes stdin
"""


def test_folder_pipeline_runs_on_a_tf_data_service_worker_in_another_process(folder):
    # A worker in another process cannot call this process's Python functions: the folder
    # source (decode, checks, error messages naming the file) must be graph-only.
    import subprocess
    import sys

    from fcndata.distributed import distribute_dataset

    ds = S.from_folder("images/*.png", "masks/{stem}.png", channels=3, num_classes=3, root=str(folder))
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    ops = {n.op for n in graph.node} | {n.op for f in graph.library.function for n in f.node_def}
    assert not ops & {"PyFunc", "PyFuncStateless", "EagerPyFunc"}
    local = [(int(e["source_index"]), e["image"].numpy().tobytes(), e["label"].numpy().tobytes()) for e in ds]
    proc = subprocess.Popen([sys.executable, "-c", _SERVICE], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        target = proc.stdout.readline().strip()
        assert target.startswith("grpc://"), target
        remote = [(int(e["source_index"]), e["image"].numpy().tobytes(), e["label"].numpy().tobytes())
                  for e in distribute_dataset(ds, target)]
    finally:
        proc.stdin.close()
        proc.wait(timeout=60)
    assert sorted(remote) == sorted(local) and len(local) == 3


def test_from_arrays_adopts_aligned_arrays_and_copies_the_rest():
    from_arrays = S.from_arrays
    from fcndata.common import aligned_empty

    rng = np.random.default_rng(0)
    images = aligned_empty((3, 16, 24, 3), np.uint8)
    images[...] = rng.integers(0, 256, images.shape)
    labels = aligned_empty((3, 16, 24), np.uint8)
    labels[...] = rng.integers(0, 2, labels.shape)
    copied_images = aligned_empty((images.size + 16,), np.uint8)[16:].reshape(images.shape)  # 16 bytes off
    copied_images[...] = images
    ds = from_arrays(images, labels, num_classes=2)
    before = [e["image"].numpy() for e in ds]
    assert all(np.array_equal(b, a) for b, a in zip(before, images))
    images[1, 0, 0] = 255 - images[1, 0, 0]  # adopted: the dataset reads this memory
    labels[2, 0, 0] = 1 - labels[2, 0, 0]
    after = list(ds)
    assert np.array_equal(after[1]["image"].numpy(), images[1]) and not np.array_equal(after[1]["image"].numpy(), before[1])
    assert np.array_equal(after[2]["label"].numpy(), labels[2])
    single = from_arrays([images[0]], [labels[0]], num_classes=2)  # one image: adopted too
    images[0, 0, 0] = 255 - images[0, 0, 0]
    assert np.array_equal(next(iter(single))["image"].numpy(), images[0])
    ds = from_arrays(copied_images, labels, num_classes=2)  # unaligned: copied, later changes unseen
    copied_images[0, 0, 0] = 255 - copied_images[0, 0, 0]
    assert not np.array_equal(next(iter(ds))["image"].numpy(), copied_images[0])
