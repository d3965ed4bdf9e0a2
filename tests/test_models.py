"""Tests for fcndata.models: shapes, bilinear init, norms, masking, BN folding, training steps."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from fcndata import models
from fcndata.config import DataConfig, ModelConfig
from fcndata.export import fold_batch_norm
from fcndata.layers import BilinearInitializer, FrozenBatchNormalization, RoiMask, all_layers
from fcndata.losses import MaskedSparseCrossEntropy
from fcndata.metrics import MeanIoU
from fcndata.models import fcn

RNG = np.random.default_rng(0)


def _image(b=1, h=64, w=64, c=3):
    return RNG.random((b, h, w, c), dtype=np.float32)


# ---------------------------------------------------------------------------- building


@pytest.mark.parametrize("variant", models.VARIANTS)
@pytest.mark.parametrize("norm", models.NORMS)
def test_tiny_builds_every_variant_and_norm(variant, norm):
    model = fcn(3, variant, backbone="tiny", norm=norm, width=4)
    out = model(_image(1, 64, 96), training=False)
    assert tuple(out.shape) == (1, 64, 96, 3)
    assert out.dtype == "float32"
    assert model.output.name.startswith("logits") or model.layers[-1].name == "logits"


@pytest.mark.parametrize(
    "backbone, channels", [("vgg16", 1), ("resnet50", 3), ("mobilenetv2", 4)]
)
def test_application_backbones_build(backbone, channels):
    model = fcn(2, "fcn8s", backbone=backbone, input_channels=channels)
    out = model(_image(1, 64, 64, channels), training=False)
    assert tuple(out.shape) == (1, 64, 64, 2)
    if channels != 3:
        kernel = model.get_layer("channel_adapter").get_weights()[0][0, 0]
        # output channel k copies input channel k mod C
        expected = np.zeros((channels, 3))
        for k in range(3):
            expected[k % channels, k] = 1
        np.testing.assert_array_equal(kernel, expected)


def test_invalid_arguments_raise_with_received():
    with pytest.raises(ValueError, match="variant must be one of .* Received: variant='fcn64s'"):
        fcn(2, "fcn64s")
    with pytest.raises(ValueError, match="only the tiny backbone exposes.*Received: variant='fcn2s', backbone='vgg16'"):
        fcn(2, "fcn2s", backbone="vgg16")
    with pytest.raises(ValueError, match="input_size must be .*multiples of 32.*Received: input_size=\\(48, 64\\)"):
        fcn(2, input_size=(48, 64))
    with pytest.raises(ValueError, match="weights file not found: /nope.h5.*never downloads.*Received: weights='/nope.h5'"):
        fcn(2, backbone="vgg16", weights="/nope.h5")


@pytest.mark.parametrize("variant", ["fcn4s", "fcn2s"])
def test_finer_variants_fuse_pool2_and_pool1(variant):
    model = fcn(3, variant, width=4, input_channels=1, masked=True)
    names = {layer.name for layer in model.layers}
    assert {"fuse_pool3", "fuse_pool2"} <= names
    assert ("fuse_pool1" in names) == (variant == "fcn2s")
    x = np.random.default_rng(0).random((1, 64, 96, 1)).astype("float32")
    out = model({"image": x, "roi": np.ones((1, 64, 96, 1), "float32")})
    assert out.shape == (1, 64, 96, 3)
    # the last upsampling is fixed bilinear, the ×2 steps train (as in the paper)
    last = model.get_layer("upscore4" if variant == "fcn4s" else "upscore_out2")
    assert not last.trainable


def test_model_from_config():
    model = models.model_from_config(
        ModelConfig(variant="fcn16s", norm="group", width=4), DataConfig(num_classes=4, channels=1)
    )
    assert model.input_shape == (None, None, None, 1)
    assert model.output_shape == (None, None, None, 4)


# ---------------------------------------------------------------------------- upsampling


def test_bilinear_2x_transposed_conv_keeps_a_constant_and_a_ramp():
    layer = keras.layers.Conv2DTranspose(
        2, 4, strides=2, padding="same", use_bias=False, kernel_initializer=BilinearInitializer()
    )
    const = np.full((1, 6, 7, 2), 3.5, np.float32)
    up = layer(const).numpy()
    assert up.shape == (1, 12, 14, 2)
    np.testing.assert_allclose(up[0, 1:-1, 1:-1], 3.5, rtol=1e-6)
    # half-pixel alignment: a ramp x_i = i upsamples to (o + 0.5) / 2 - 0.5 in the interior
    ramp = np.broadcast_to(np.arange(7, dtype=np.float32)[None, None, :, None], (1, 6, 7, 2))
    up = layer(ramp).numpy()[0, 3, 1:-1, 0]
    np.testing.assert_allclose(up, (np.arange(1, 13) + 0.5) / 2 - 0.5, atol=1e-5)


def test_upsampling_trainability_and_zero_init_skips():
    model = fcn(3, "fcn8s", width=4)
    assert model.get_layer("upscore2").trainable
    assert model.get_layer("upscore_pool4").trainable
    assert not model.get_layer("upscore8").trainable
    for name in ("score_pool4", "score_pool3"):
        assert not np.any(model.get_layer(name).get_weights()[0])
    # the x8 kernel is bilinear: constant scores upsample to the constant inside
    up = model.get_layer("upscore8")
    out = up(np.ones((1, 4, 4, 3), np.float32)).numpy()
    np.testing.assert_allclose(out[0, 8:-8, 8:-8], 1.0, rtol=1e-5)


# ---------------------------------------------------------------------------- normalisation


def _randomise_bn(model):
    for layer in all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.moving_mean.shape[0]
            layer.set_weights(
                [
                    RNG.uniform(0.5, 1.5, n).astype("float32"),
                    RNG.normal(0, 0.1, n).astype("float32"),
                    RNG.normal(0, 0.1, n).astype("float32"),
                    RNG.uniform(0.5, 2.0, n).astype("float32"),
                ]
            )


def test_frozen_batch_is_the_same_in_training_and_inference():
    model = fcn(3, "fcn8s", norm="frozen_batch", width=4)
    _randomise_bn(model)
    x = _image(1)
    np.testing.assert_array_equal(model(x, training=True).numpy(), model(x, training=False).numpy())
    bn = model.get_layer("block1_1_frozen_batchnorm")
    before = bn.moving_mean.numpy().copy()
    model(x, training=True)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), before)


def test_group_norm_groups_divide_channels():
    model = fcn(2, "fcn32s", norm="group", width=12)
    for layer in model.layers:
        if isinstance(layer, keras.layers.GroupNormalization):
            channels = layer.input.shape[-1]
            assert channels % layer.groups == 0 and layer.groups <= 32


def test_fold_batch_norm_matches_inference():
    model = fcn(3, "fcn8s", backbone="tiny", norm="batch", width=4)
    _randomise_bn(model)
    folded = fold_batch_norm(model)
    assert not [l for l in all_layers(folded) if isinstance(l, keras.layers.BatchNormalization)]
    x = _image(2)
    np.testing.assert_allclose(folded(x).numpy(), model(x, training=False).numpy(), atol=1e-4, rtol=1e-4)


def test_frozen_application_backbone_and_depthwise_folding():
    model = fcn(2, "fcn8s", backbone="mobilenetv2", norm="frozen_batch")
    bns = [l for l in all_layers(model) if isinstance(l, keras.layers.BatchNormalization)]
    assert bns and all(isinstance(l, FrozenBatchNormalization) for l in bns)
    _randomise_bn(model)
    x = _image(1)
    expected = model(x, training=False).numpy()
    np.testing.assert_array_equal(model(x, training=True).numpy(), expected)
    folded = fold_batch_norm(model)  # DepthwiseConv2D + BN pairs too
    assert not [l for l in all_layers(folded) if isinstance(l, keras.layers.BatchNormalization)]
    np.testing.assert_allclose(folded(x).numpy(), expected, atol=1e-4, rtol=1e-4)


# ---------------------------------------------------------------------------- masking


def _roi_probe(model):
    names = [l.name for l in model.layers if isinstance(l, RoiMask)]
    return keras.Model(model.inputs, [model.get_layer(n).output for n in names]), names


def test_masked_features_are_zero_outside_the_roi():
    model = fcn(3, "fcn8s", norm="batch", masked=True, width=4)
    probe, names = _roi_probe(model)
    assert len(names) == 1 + 10 + 2 + 3  # image, 10 conv blocks, fc6/fc7, 3 score maps
    roi = np.zeros((1, 96, 128, 1), np.float32)
    roi[:, :50, :70] = 1
    for name, feat in zip(names, probe({"image": _image(1, 96, 128), "roi": roi}, training=False)):
        feat = feat.numpy()
        stride = 96 // feat.shape[1]
        small = roi[0, ::stride, ::stride, 0] if stride == 1 else roi[0].reshape(
            96 // stride, stride, 128 // stride, stride).max(axis=(1, 3))
        assert not np.any(feat[0][small == 0]), name
        assert np.any(feat[0][small == 1]) or name.startswith(("score", "fuse")), name


def _pad_difference(model, masked):
    """Max |logits(image alone) - logits(image padded)| over the real pixels."""
    image = _image(1, 64, 64)
    padded = np.zeros((1, 96, 128, 3), np.float32)
    padded[:, :64, :64] = image
    padded[:, 64:, :] = RNG.random((1, 32, 128, 3))  # garbage in the padding
    padded[:, :, 64:] = RNG.random((1, 96, 64, 3))
    if masked:
        roi_alone = np.ones((1, 64, 64, 1), np.float32)
        roi = np.zeros((1, 96, 128, 1), np.float32)
        roi[:, :64, :64] = 1
        alone = model({"image": image, "roi": roi_alone}, training=False)
        pad = model({"image": padded, "roi": roi}, training=False)
    else:
        alone = model(image, training=False)
        pad = model(padded, training=False)
    return float(np.abs(alone.numpy()[0] - pad.numpy()[0, :64, :64]).max())


def test_masking_stops_padding_from_leaking_into_real_pixels(capsys):
    results = {}
    for norm in ("none", "batch", "group"):
        for masked in (False, True):
            keras.utils.set_random_seed(1)
            model = fcn(3, "fcn8s", norm=norm, masked=masked, width=4)
            results[(norm, masked)] = _pad_difference(model, masked)
    with capsys.disabled():
        print("\nmax |alone - padded| on real pixels (tiny fcn8s, random weights):")
        for (norm, masked), value in results.items():
            print(f"  norm={norm:5s} masked={masked!s:5s} {value:.3g}")
    for norm in ("none", "batch"):  # exact: per-pixel ops after masking, aligned pooling
        assert results[(norm, True)] < 1e-4 * max(1.0, results[(norm, False)])
        assert results[(norm, False)] > 10 * results[(norm, True)]


def test_masked_application_backbone_builds():
    model = fcn(2, "fcn8s", backbone="vgg16", masked=True)
    out = model({"image": _image(1, 64, 64), "roi": np.ones((1, 64, 64, 1), np.float32)})
    assert tuple(out.shape) == (1, 64, 64, 2)


# ---------------------------------------------------------------------------- weights


def test_weights_round_trip_and_class_change(tmp_path):
    model = fcn(3, "fcn8s", width=4)
    path = str(tmp_path / "m.weights.h5")
    model.save_weights(path)
    same = fcn(3, "fcn8s", width=4, weights=path)
    x = _image(1)
    np.testing.assert_allclose(same(x, training=False), model(x, training=False), atol=1e-6)
    other = fcn(5, "fcn8s", width=4, weights=path)  # score layers skipped, backbone loaded
    np.testing.assert_array_equal(
        other.get_layer("block1_1_conv").get_weights()[0], model.get_layer("block1_1_conv").get_weights()[0]
    )
    with pytest.raises(ValueError, match="tiny backbone has no pretrained weights"):
        bad = tmp_path / "x.h5"
        bad.write_bytes(b"")
        fcn(3, weights=str(bad))


def test_serialisation_round_trip(tmp_path):
    model = fcn(2, "fcn16s", norm="frozen_batch", masked=True, width=4)
    path = str(tmp_path / "m.keras")
    model.save(path)
    loaded = keras.saving.load_model(path, compile=False)
    x = {"image": _image(1), "roi": np.ones((1, 64, 64, 1), np.float32)}
    np.testing.assert_allclose(loaded(x), model(x), atol=1e-6)


# ---------------------------------------------------------------------------- training steps


def _train_step(jit_compile, masked=False, seed=0):
    """Two fit steps of a seeded fcn8s on one batch: (losses, first-step logits, last-step mean IoU)."""
    keras.utils.set_random_seed(seed)
    model = fcn(3, "fcn8s", width=4, masked=masked)
    model.compile(
        optimizer=keras.optimizers.SGD(0.05),
        loss=MaskedSparseCrossEntropy(),
        weighted_metrics=[MeanIoU(3)],
        jit_compile=jit_compile,
    )
    rng = np.random.default_rng(seed)
    x = rng.random((2, 64, 64, 3), dtype=np.float32)
    y = rng.integers(0, 3, (2, 64, 64)).astype("int32")
    w = np.ones((2, 64, 64), np.float32)
    w[:, 40:] = 0  # padding rows, as to_keras marks them
    if masked:
        x = {"image": x, "roi": w[..., None]}
    logits = model(x, training=False)
    ds = tf.data.Dataset.from_tensors((x, y, w)).repeat(2)  # the to_keras triplet
    history = model.fit(ds, epochs=2, verbose=0)
    return history.history["loss"], np.asarray(logits, np.float32), history.history["mean_iou"][-1]


def test_train_step_mixed_bfloat16_masked():
    reference, reference_logits, _ = _train_step(jit_compile=False, masked=True)
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        losses, logits, iou = _train_step(jit_compile=False, masked=True)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    # The logits layer casts to float32 whatever the policy; bfloat16 keeps 8 bits of mantissa, so
    # the same seeded model and batch give the float32 losses within a few bf16 roundings (2**-8 each).
    assert logits.dtype == np.float32
    np.testing.assert_allclose(losses, reference, rtol=0.05)
    assert losses[1] < losses[0] and 0 <= iou <= 1  # it trains: the second step's loss is lower


def test_train_step_jit_compile():
    reference, _, _ = _train_step(jit_compile=False)
    losses, _, _ = _train_step(jit_compile=True)
    # XLA fuses the same float32 arithmetic in another order: equal to a few float32 roundings.
    np.testing.assert_allclose(losses, reference, rtol=1e-4)
    assert losses[1] < losses[0]


# ---------------------------------------------------------------------------- conv decoder (unet)


def _inputs(x, masked):
    return {"image": x, "roi": np.ones(x.shape[:3] + (1,), "float32")} if masked else x


@pytest.mark.parametrize("norm", models.NORMS)
@pytest.mark.parametrize("masked", [False, True])
def test_unet_decoder_builds_on_tiny_for_every_norm(norm, masked):
    model = fcn(3, "unet", norm=norm, masked=masked, width=2, input_channels=1)
    out = model(_inputs(_image(2, 32, 64, 1), masked), training=True)
    assert tuple(out.shape) == (2, 32, 64, 3) and out.dtype == "float32"
    names = {layer.name for layer in model.layers}
    # the decoder refines every skip with convs, down to full resolution; no FCN score fusion
    assert {"up16_concat", "up1_concat", "up1_2_conv", "score"} <= names
    assert not any(n.startswith(("fuse_", "score_pool")) for n in names)


@pytest.mark.parametrize(
    "backbone, norm, masked",
    [
        ("vgg16", "batch", True),
        ("resnet50", "group", False),
        ("resnet50", "frozen_batch", True),
        ("mobilenetv2", "none", True),
        ("mobilenetv2", "batch", False),
    ],
)
def test_unet_decoder_builds_on_application_backbones(backbone, norm, masked):
    model = fcn(2, "unet", backbone=backbone, norm=norm, masked=masked, width=2, input_channels=1)
    out = model(_inputs(_image(1, 32, 64, 1), masked), training=False)
    assert tuple(out.shape) == (1, 32, 64, 2)
    assert {"up16_concat", "up8_concat", "upscore8"} <= {layer.name for layer in model.layers}
    assert not model.get_layer("upscore8").trainable


def test_unet_accepts_any_multiple_of_the_stride():
    model = fcn(2, "unet", width=2, input_channels=1, norm="none")
    for h, w in [(32, 32), (32, 160), (96, 64), (64, 224)]:
        assert tuple(model(_image(1, h, w, 1)).shape) == (1, h, w, 2)
    with pytest.raises(ValueError, match="multiples of 32"):
        fcn(2, "unet", input_size=(48, 64))


def test_unet_loss_decreases_on_shapes_in_a_few_steps():
    from fcndata.config import load_config
    from fcndata.pipeline import build_pipeline
    from fcndata.train import build_model

    cfg = load_config(
        "pipelines/shapes.yaml",
        ["data.num_images=4", "batching.batch_size=4", "model.width=4", "train.schedule=constant", "loss.name=cross_entropy", "loss.terms=null"],
    )
    assert cfg.model.variant == "unet"
    x, y, w = next(iter(build_pipeline(cfg, "train", epochs=1)))
    keras.utils.set_random_seed(0)
    model = build_model(cfg)
    losses = [float(model.train_on_batch(x, y, sample_weight=w)[0]) for _ in range(10)]
    # (width 4: it learns slowly, but steadily) every step lowers the loss
    assert all(b < a for a, b in zip(losses, losses[1:])) and losses[-1] < 0.95 * losses[0], losses


# ---------------------------------------------------------------------------- depth, intensity, roi norms (issue 24)


@pytest.mark.parametrize("depth", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("variant", ["unet", "fcn8s"])
def test_depth_sets_the_stride_and_keeps_the_output_size(variant, depth):
    if variant == "fcn8s" and depth < 3:
        with pytest.raises(ValueError, match=f"fcn8s predicts at stride 8, but depth={depth} puts the fc6/fc7 head at "
                                             f"stride {2**depth}.*Use depth >= 3"):
            fcn(3, variant, width=2, depth=depth)
        return
    stride = 2**depth
    assert models.stride("tiny", depth) == stride
    model = fcn(3, variant, width=2, depth=depth, masked=True, norm="batch")
    h, w = 3 * stride, 5 * stride
    x = {"image": _image(2, h, w), "roi": np.ones((2, h, w, 1), "float32")}
    assert tuple(model(x, training=False).shape) == (2, h, w, 3)
    pools = [l.name for l in model.layers if l.name.startswith("pool")]
    assert pools == [f"pool{k}" for k in range(1, depth + 1)]
    with pytest.raises(ValueError, match=f"multiples of {stride}"):
        fcn(3, variant, width=2, depth=depth, input_size=(stride + stride // 2 if stride > 1 else 3, stride))


def test_depth_5_keeps_the_layer_names_of_the_paper():
    names = {l.name for l in fcn(3, "fcn8s", width=2).layers}
    assert {"score_fr", "upscore2", "fuse_pool4", "score_pool4", "upscore_pool4", "fuse_pool3", "upscore8"} <= names
    names = {l.name for l in fcn(3, "fcn8s", width=2, depth=4).layers}
    assert {"score_fr", "upscore2", "fuse_pool3", "score_pool3", "upscore8"} <= names and "fuse_pool4" not in names


def test_masked_norms_use_the_roi_layers_and_unmasked_the_keras_ones():
    from fcndata import normalization as N

    kinds = {
        ("batch", True): N.RoiBatchNormalization, ("group", True): N.RoiGroupNormalization,
        ("instance", True): N.RoiInstanceNormalization, ("batch", False): keras.layers.BatchNormalization,
        ("group", False): keras.layers.GroupNormalization, ("instance", False): keras.layers.GroupNormalization,
    }
    for (norm, masked), cls in kinds.items():
        model = fcn(2, "unet", norm=norm, masked=masked, width=2, depth=2)
        found = [l for l in model.layers if "norm" in l.name or l.name.endswith("_bn")]
        assert found and all(type(l) is cls for l in found), (norm, masked, {type(l).__name__ for l in found})
        if norm == "instance" and not masked:
            assert all(l.groups == l.input.shape[-1] for l in found)


def test_model_from_config_reads_intensity_clip_and_depth():
    from fcndata.normalization import Intensity

    model = models.model_from_config(
        ModelConfig(variant="unet", width=2, depth=2, masked=True, intensity="zscore", clip=(0, 1000)),
        DataConfig(source="phantom", num_classes=2, channels=1),
    )
    layer = model.get_layer("intensity")
    assert isinstance(layer, Intensity) and layer.mode == "zscore" and layer.pixel_max == 65535.0
    assert layer.clip == (0.0, 1000.0) and len([l for l in model.layers if l.name.startswith("pool")]) == 2
    data = DataConfig(source="folder", images="x/*.png", masks="y/*.png", image_dtype="uint16", num_classes=2)
    assert models.pixel_max(data) == 65535.0 and models.pixel_max(DataConfig()) == 255.0
    assert "intensity" not in {l.name for l in models.model_from_config(ModelConfig(width=2), DataConfig()).layers}
    assert models.model_stride(ModelConfig(depth=3)) == 8 and models.model_stride(ModelConfig()) == 32


def test_intensity_and_clip_errors_name_the_config_keys():
    with pytest.raises(ValueError, match="model.intensity: zscore .*needs the roi.*set model.masked: true.*"
                                         "Received: model.intensity=zscore, model.masked=false"):
        models.model_from_config(ModelConfig(intensity="zscore", width=2), DataConfig())
    with pytest.raises(ValueError, match="intensity='zscore'.*set masked=True.*Received: intensity='zscore', masked=False"):
        fcn(2, width=2, intensity="zscore")
    folder = DataConfig(source="folder", images="x/*.png", masks="y/*.png", num_classes=2)
    with pytest.raises(ValueError, match="model.clip is in raw pixel values.*set data.image_dtype to uint8 or uint16"
                                         ".*Received: data.image_dtype='auto'"):
        models.model_from_config(ModelConfig(clip=(0, 100), width=2), folder)
    with pytest.raises(ValueError, match="depth is for the tiny backbone.*Received: depth=3, backbone='vgg16'"):
        fcn(2, backbone="vgg16", depth=3)
    with pytest.raises(ValueError, match="fcn32s predicts at stride 32.*variant='fcn16s'.*Received: variant='fcn32s', depth=4"):
        fcn(2, "fcn32s", depth=4, width=2)
