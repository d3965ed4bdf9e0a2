"""build_pipeline: the recipes in pipelines/ run end to end, deterministically."""

from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf

import fcndata.testing as t
from fcndata import elements as E
from fcndata.augment import Augment
from fcndata.batching import PadAndBatch
from fcndata.config import load_config
from fcndata.patches import RandomPatches
from fcndata.pipeline import build_pipeline, steps_per_epoch
from fcndata.sampling import LossSampling

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
    n = steps_per_epoch(cfg)
    a = _batches(build_pipeline(cfg, "train", epochs=2), 2 * n)
    b = _batches(build_pipeline(cfg, "train", epochs=2), 2 * n)
    assert len(a) == 2 * n
    for x, y in zip(a, b):
        for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y)):
            np.testing.assert_array_equal(u, v)
    # epoch 1 is not a replay of epoch 0: other order, other augmentations
    first, second = a[:n], a[n:]
    assert not all(np.array_equal(x[0], y[0]) for x, y in zip(first, second))


def test_resumed_stream_continues_where_it_was():
    cfg = _cfg("brain_fullimage.yaml", "batching.batch_size=2", "augment.flip_horizontal=true", "augment.rotate=10",
               "augment.brightness=0.05")
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


def test_eval_cardinality_comes_from_metadata():
    for extra in (["batching.bucket_by=area", "batching.num_buckets=2"], ["batching.bucket_by=none"]):
        cfg = _cfg("brain_fullimage.yaml", "batching.batch_size=2", *extra)
        ds = build_pipeline(cfg, "eval")
        assert int(ds.cardinality()) == sum(1 for _ in ds)


def test_thousand_epochs_build_once():
    # The stream is built once (Dataset.range(...).flat_map, the epoch a tensor): the graph of 1000
    # epochs is the graph of 1 but for the one constant holding the count. Chained in Python, 1000
    # epochs built 1000 copies of the pipeline (~127 s to build on shapes); the times go to
    # benchmarks/pipeline.py, the test checks the structure that makes them flat.
    graphs = {}
    for epochs in (1, 1000):
        cfg = load_config(ROOT / "pipelines" / "shapes.yaml", [f"train.epochs={epochs}"])
        graph = tf.compat.v1.GraphDef()
        graph.ParseFromString(build_pipeline(cfg, "train")._as_serialized_graph().numpy())
        graphs[epochs] = graph
    assert len(graphs[1].node) == len(graphs[1000].node)
    assert sorted(n.op for n in graphs[1].node) == sorted(n.op for n in graphs[1000].node)
    assert len(graphs[1].library.function) == len(graphs[1000].library.function)


def test_steps_per_epoch_reads_no_data(monkeypatch):
    from fcndata import sources

    monkeypatch.setattr(sources, "load_source", lambda *a, **k: pytest.fail("steps_per_epoch read the source"))
    cfg = _cfg("shapes_patchwise.yaml", "batching.batch_size=8")  # grid: counted from the image sizes
    _, shapes = sources.source_shapes(cfg.data, "train")
    from fcndata.grid import grid_origins_2d

    patches = sum(len(grid_origins_2d(s, cfg.patches.patch_size, cfg.patches.stride, cfg.patches.border)) for s in shapes)
    assert steps_per_epoch(cfg) == -(-patches // 8)
    assert steps_per_epoch(_cfg("brain_fullimage.yaml", "batching.batch_size=4")) == 2  # ceil(6 / 4)


def test_training_starts_without_reading_the_source_first(monkeypatch, tmp_path):
    """2,000 images: the trainer's first step comes after at most one read of each image."""
    import keras

    from fcndata import sources
    from fcndata import train as trainer

    reads = {"n": 0}
    load_source = sources.load_source

    def counting(data, split="train", **kwargs):
        ds = load_source(data, split, **kwargs)
        if split != "train":
            return ds

        def count(index):
            reads["n"] += 1
            return index

        return ds.map(lambda e: {**e, E.SOURCE_INDEX: tf.ensure_shape(
            tf.py_function(count, [e[E.SOURCE_INDEX]], tf.int64), [])})

    class Started(Exception):
        pass

    def fit(self, x, **kwargs):
        next(iter(x))  # the first step's batch
        raise Started(reads["n"])

    monkeypatch.setattr(sources, "load_source", counting)
    monkeypatch.setattr(keras.Model, "fit", fit)
    cfg = load_config(ROOT / "pipelines" / "shapes.yaml", [
        "data.num_images=2000", "data.val_num_images=2", "data.min_size=16", "data.max_size=24",
        "batching.batch_size=4", "train.epochs=3", f"train.run_dir={tmp_path}", "model.width=4",
        "batching.pad_to_multiple=32",
    ])
    with pytest.raises(Started) as started:
        trainer.train(cfg, tmp_path / "run")
    assert 0 < started.value.args[0] <= 2000


def _hand_composed(seed=3):
    """Augment → RandomPatches → LossSampling → PadAndBatch, composed by hand (no build_pipeline)."""
    return (t.dataset(t.ODD_SIZES)
            .apply(Augment(flip_horizontal=True, rotate=15.0, brightness=0.2, seed=seed))
            .apply(RandomPatches(patch_size=8, num_per_image=3, seed=seed))
            .apply(LossSampling(0.5, seed=seed))
            .apply(PadAndBatch(4, pad_to_multiple=8)))


def _same(xs, ys):
    return len(xs) == len(ys) and all(
        np.array_equal(u, v) for x, y in zip(xs, ys) for u, v in zip(tf.nest.flatten(x), tf.nest.flatten(y)))


def test_hand_composed_pipeline_draws_fresh_each_epoch_and_replays_from_its_seed():
    ds = _hand_composed()
    first, second = _batches(ds, 100), _batches(ds, 100)  # two iterations: two Keras epochs
    assert not _same(first, second)
    for key in ("image", "origin", "weight"):
        assert not all(np.array_equal(x[key], y[key]) for x, y in zip(first, second)), key
    again = _hand_composed()  # a fresh pipeline with the same seed replays both epochs
    assert _same(first, _batches(again, 100)) and _same(second, _batches(again, 100))
    # .repeat() is fresh too
    both = _batches(_hand_composed().repeat(2), 100)
    assert _same(both, first + second)


def test_hand_composed_epochs_stage_resumes_exactly():
    def stream(count, initial_epoch=0):
        return (t.dataset(t.ODD_SIZES).apply(E.Epochs(count, initial_epoch, shuffle_buffer=4, seed=1))
                .apply(Augment(flip_horizontal=True, rotate=15.0, seed=3))
                .apply(RandomPatches(patch_size=8, num_per_image=3, seed=3))
                .apply(LossSampling(0.5, seed=3)))

    full = _batches(stream(3), 1000)
    resumed = _batches(stream(2, initial_epoch=1), 1000)
    per_epoch = len(full) // 3
    assert _same(full[per_epoch:], resumed)
    assert not _same(full[:per_epoch], full[per_epoch:2 * per_epoch])


def test_random_patches_alone_draw_fresh_each_epoch():
    ds = t.dataset(t.ODD_SIZES).apply(RandomPatches(patch_size=8, num_per_image=3, seed=3))
    first, second = _batches(ds, 100), _batches(ds, 100)
    assert not all(np.array_equal(x["origin"], y["origin"]) for x, y in zip(first, second))


def _cache_ops(ds) -> int:
    """CacheDataset ops in a dataset's graph, inside tf.data functions included."""
    graph = tf.compat.v1.GraphDef.FromString(ds._as_serialized_graph().numpy())
    nodes = list(graph.node) + [n for f in graph.library.function for n in f.node_def]
    return sum(n.op.startswith("CacheDataset") for n in nodes)


def test_folder_source_is_cached_once(folder):
    cfg = load_config(ROOT / "pipelines" / "folder.yaml", [
        f"data.root={folder}", "data.images=images/*.png", "data.masks=masks/{stem}.png", "data.val_images=null",
        "data.val_masks=null", "data.cache=true", "batching.batch_size=2", "data.channels=3"])
    ds = build_pipeline(cfg, "train", keras=False, epochs=2)
    assert _cache_ops(ds) == 1


def test_import_fcndata_as_fd_offers_the_entry_points_and_the_modules():
    import subprocess
    import sys

    code = ("import fcndata as fd; "
            "names = fd.__all__; assert {'load_config', 'build_pipeline', 'steps_per_epoch', 'ExtractPatches', "
            "'SlidingWindowPredictor'} <= set(names); [getattr(fd, n) for n in names]; "
            "cfg = fd.load_config('pipelines/shapes.yaml', ['data.num_images=4', 'batching.batch_size=2']); "
            "print(fd.steps_per_epoch(cfg), fd.models.__name__, fd.losses.__name__, fd.preview.__name__, "
            "type(fd.build_pipeline(cfg, 'train', epochs=1)).__name__ != '')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.stdout.split() == ["2", "fcndata.models", "fcndata.losses", "fcndata.preview", "True"], out.stderr[-2000:]
    missing = subprocess.run([sys.executable, "-c", "import fcndata as fd; fd.nope"], capture_output=True, text=True,
                             timeout=300)
    assert "module 'fcndata' has no attribute 'nope'" in missing.stderr


def test_resumed_patchwise_stream_continues_where_it_was():
    cfg = _cfg("shapes_patchwise.yaml", "batching.batch_size=8")
    n = steps_per_epoch(cfg)
    full = _batches(build_pipeline(cfg, "train", keras=False, epochs=3), 3 * n)
    resumed = _batches(build_pipeline(cfg, "train", keras=False, initial_epoch=2, epochs=1), n)
    assert len(resumed) == n
    for x, y in zip(full[2 * n:], resumed):
        for key in ("image", "label", "origin", "source_index"):
            np.testing.assert_array_equal(x[key], y[key])


def test_epochs_stage_validates_its_arguments():
    with pytest.raises(ValueError, match=r"Epochs: count must be >= 1. Received: count=0"):
        E.Epochs(0)
    with pytest.raises(TypeError, match=r"Epochs: initial_epoch must be an int. Received: initial_epoch=1.5"):
        E.Epochs(2, initial_epoch=1.5)
    assert repr(E.Epochs(3, 1)) == "Epochs(count=3, initial_epoch=1, shuffle_buffer=0, seed=0)"


def test_patches_switched_on_in_a_bucketing_recipe_batch_plainly():
    # The one-line switch of README "Class balance": patches added to a whole-image recipe that
    # buckets by area. Patches all have patch_size, so training batches them without buckets.
    cfg = _cfg("brain_fullimage.yaml", "batching.batch_size=4", "batching.bucket_by=area",
               "patches.mode=balanced", "patches.patch_size=32", "patches.num_per_image=2")
    batches = _batches(build_pipeline(cfg, "train", keras=False, epochs=1), steps_per_epoch(cfg))
    assert {b["image"].shape[1:3] for b in batches} == {(32, 32)}
    assert all(np.any(b["roi"]) for b in batches)
    evaluation = next(iter(build_pipeline(cfg, "eval", keras=False)))  # eval still buckets whole images
    assert evaluation["image"].shape[1] % 32 == 0 and evaluation["image"].shape[1] >= 40
