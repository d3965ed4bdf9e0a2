"""Tests for fcndata.fingerprint and fcndata.plan: one test per rule on synthetic fingerprints,
the written plan's comments and round trip, and plan -> train end to end on a folder."""

from __future__ import annotations

import dataclasses
import re

import cv2
import numpy as np
import pytest
import yaml

from fcndata import config as C
from fcndata import plan as P
from fcndata.fingerprint import Fingerprint, fingerprint

CPU = P.Budget(P.CPU_BUDGET, "CPU default", 600.0, "cpu")
NAMES = ("background", "road", "car", "sign", "bike")


def fp(**kw) -> Fingerprint:
    """A synthetic fingerprint: 200 grayscale uint8 images of 180x216, 5 classes, none rare."""
    base = dict(
        source="folder", num_train=200, num_val=50, height=(176.0, 180.0, 184.0), width=(212.0, 216.0, 220.0),
        num_shapes=2, channels=1, dtype="uint8", class_names=NAMES, class_frequency=(0.6, 0.2, 0.1, 0.05, 0.05),
        images_with_class=(200, 200, 180, 100, 90), ignore_fraction=0.0,
        intensity={"p0.5": 3.0, "p99.5": 250.0, "mean": 100.0, "std": 50.0},
        foreground={"p0.5": 20.0, "p99.5": 240.0, "mean": 120.0, "std": 40.0},
        sampled_images=200, train_bytes=200 * 180 * 216 * 2, seconds=0.5)
    base.update(kw)
    return Fingerprint(**base)


def folder_config(**data) -> C.Config:
    raw = {"source": "folder", "images": "i/*.png", "masks": "m/{stem}.png", "num_classes": 5, "channels": 1}
    return C.config_from_dict({"data": {**raw, **data}}, name="x.yaml")


def planned(f: Fingerprint, budget=CPU, **data) -> P.Plan:
    return P.plan(folder_config(**data), fingerprint=f, budget=budget)


# ---------------------------------------------------------------------------- one test per rule


def test_network_is_a_masked_unet():
    cfg = planned(fp()).config
    assert (cfg.model.variant, cfg.model.backbone, cfg.model.masked) == ("unet", "tiny", True)


def test_inputs_are_z_scored_whatever_the_bit_depth():
    assert planned(fp()).config.model.intensity == "zscore"
    assert planned(fp(dtype="uint16")).config.model.intensity == "zscore"
    assert planned(fp(dtype="float32")).config.model.intensity == "zscore"


def test_whole_images_when_two_padded_largest_fit_the_budget():
    p = planned(fp())
    assert p.config.patches is None and p.config.predict.patch_size is None
    # 192x224 padded: 2 fit the CPU's step budget (time per step), as on a 2-core machine they should
    assert p.config.batching.batch_size == 2
    assert "budget" in p.reasons["batching.batch_size"] and "184x220" in p.reasons["batching.batch_size"]
    small = planned(fp(height=(90.0, 100.0, 110.0), width=(90.0, 100.0, 110.0)))
    assert small.config.batching.batch_size == 4  # the CPU cap: batch 4 beat 8 on brain and shapes


def test_big_images_train_on_patches_a_multiple_of_the_stride():
    p = planned(fp(height=(512.0, 600.0, 700.0), width=(512.0, 640.0, 800.0), channels=3))
    cfg = p.config
    assert cfg.patches is not None and cfg.patches.mode == "random"
    n = cfg.patches.patch_size[0]
    assert cfg.patches.patch_size == (n, n) and n % 2**cfg.model.depth == 0 and 4 * 2**cfg.model.depth <= n < 512
    assert cfg.predict.patch_size == (n, n) and cfg.predict.blend == "gaussian"
    assert "> the 128 MiB CPU default budget" in p.reasons["batching.batch_size"]
    # a GPU's budget fits whole images again
    gpu = P.Budget(8 * P.GiB, "GPU", 600.0, "gpu")
    assert planned(fp(height=(512.0, 600.0, 700.0), width=(512.0, 640.0, 800.0), channels=3), gpu).config.patches is None


def test_rare_class_on_patches_balances_the_patches_not_the_loss():
    f = fp(height=(512.0, 600.0, 700.0), width=(512.0, 640.0, 800.0), class_frequency=(0.8, 0.15, 0.04, 0.007, 0.003))
    cfg = planned(f).config
    assert cfg.patches.mode == "balanced" and cfg.sampling is None


def test_rare_class_weights_the_loss_and_the_comment_names_it():
    p = planned(fp(class_frequency=(0.8, 0.15, 0.04, 0.007, 0.003)))
    assert p.config.sampling.class_weights == "median_frequency" and p.config.sampling.max_weight == 10.0
    assert "sign 0.70 %" in p.reasons["sampling.class_weights"] and "bike 0.30 %" in p.reasons["sampling.class_weights"]
    assert planned(fp()).config.sampling is None


def test_loss_is_cross_entropy_plus_dice():
    cfg = planned(fp()).config
    assert cfg.loss.name == "sum" and [t["name"] for t in cfg.loss.terms] == ["cross_entropy", "dice"]


def test_wide_16_bit_range_is_clipped_to_the_foreground_percentiles():
    f = fp(dtype="uint16", intensity={"p0.5": 0.0, "p99.5": 4000.0, "mean": 1000.0, "std": 900.0},
           foreground={"p0.5": 900.4, "p99.5": 1400.6, "mean": 1100.0, "std": 80.0})
    p = planned(f)
    assert p.config.model.clip == (900.0, 1401.0) and p.config.data.image_dtype == "uint16"
    assert "900/1401" in p.reasons["model.clip"]
    assert planned(fp()).config.model.clip is None  # 8-bit: the z-score alone
    narrow = fp(dtype="uint16", intensity={"p0.5": 30000.0, "p99.5": 30200.0, "mean": 30100.0, "std": 50.0})
    assert planned(narrow).config.model.clip is None  # an offset, not a wide range: the z-score removes it


def test_few_images_get_augmentation_without_flips_when_the_budget_is_long():
    short = P.Budget(P.CPU_BUDGET, "CPU default", 60.0, "cpu")
    assert planned(fp(num_train=12), short).config.augment is None  # a minute is spent better on the data
    few = planned(fp(num_train=12)).config.augment
    assert few.scale == (0.9, 1.1) and few.rotate == 10.0 and not few.flip_horizontal
    assert planned(fp()).config.augment is None


@pytest.mark.parametrize("side, depth", [(28, 2), (37, 3), (64, 4), (95, 4), (128, 5), (1000, 5), (6, 1)])
def test_depth_keeps_the_deepest_map_at_least_4_px_and_pads_to_the_stride(side, depth):
    cfg = planned(fp(height=(float(side), float(side), float(side) + 8), width=(float(side) + 5,) * 3)).config
    assert cfg.model.depth == depth and cfg.batching.pad_to_multiple == 2**depth


def test_width_16_and_no_norm_on_cpu_32_and_roi_instance_norm_on_gpu():
    small = planned(fp(height=(40.0, 50.0, 60.0), width=(40.0, 50.0, 61.0))).config.model
    assert (small.width, small.norm) == (16, "none")
    assert (planned(fp()).config.model.width, planned(fp()).config.model.norm) == (16, "none")
    gpu = planned(fp(), P.Budget(8 * P.GiB, "GPU", 600.0, "gpu")).config.model
    assert (gpu.width, gpu.norm) == (32, "instance")


def test_mixed_sizes_bucket_by_area():
    assert planned(fp()).config.batching.bucket_by == "area"
    assert planned(fp(num_shapes=1)).config.batching.bucket_by == "none"


def test_cache_when_the_split_fits_in_memory():
    assert planned(fp()).config.data.cache is True
    assert planned(fp(train_bytes=1 << 50)).config.data.cache is False


def test_minutes_become_train_seconds_with_the_cosine_schedule():
    p = P.plan(folder_config(), fingerprint=fp(), minutes=2.5)
    t = p.config.train
    assert (t.seconds, t.epochs, t.optimizer, t.schedule, t.learning_rate) == (150.0, None, "adam", "cosine", 2e-3)
    assert p.reasons["train.seconds"] == "2.5 minutes"
    small = P.plan(folder_config(), fingerprint=fp(height=(40.0, 50.0, 60.0), width=(40.0, 50.0, 61.0)), budget=CPU)
    assert small.config.train.learning_rate == 3e-3  # shapes measured


def test_every_rule_sets_the_keys_it_declares_and_gives_a_reason():
    f = fp(num_train=10, dtype="uint16", class_frequency=(0.9, 0.05, 0.04, 0.007, 0.003),
           intensity={"p0.5": 0.0, "p99.5": 4000.0, "mean": 1000.0, "std": 900.0})
    p = planned(f)
    for rule in P.RULES:
        assert rule.reason and rule.name
        for key in rule.keys:
            if not key.endswith("*") and key != "predict.patch_size":
                assert key in p.reasons or key.split(".")[0] in p.reasons, (rule.name, key)
    assert all(p.reasons.values())


def test_bytes_per_pixel_grows_with_width_and_budget_parsing():
    assert P.bytes_per_pixel(16, 4) > P.bytes_per_pixel(8, 4) > P.bytes_per_pixel(8, 1)
    assert P.parse_memory("4GiB") == 4 << 30 and P.parse_memory("256MiB") == 256 << 20
    with pytest.raises(ValueError, match=r"--memory must be a size such as 4GiB.*Received: --memory lots"):
        P.parse_memory("lots")


# ---------------------------------------------------------------------------- writing and errors


def test_written_plan_comments_every_value_and_loads_back_equal(tmp_path):
    (tmp_path / "x.yaml").write_text("data: {source: folder, images: 'i/*.png', masks: 'm/{stem}.png', num_classes: 5}")
    recipe = C.load_config(tmp_path / "x.yaml")
    f = fp(num_train=10, class_frequency=(0.9, 0.05, 0.04, 0.007, 0.003),
           height=(512.0, 600.0, 700.0), width=(512.0, 640.0, 800.0))
    p = P.plan(recipe, fingerprint=f, budget=CPU)
    out = P.write_plan(p, tmp_path / "x.plan.yaml")
    assert C.load_config(out) == p.config
    text = out.read_text()
    section = None
    for line in text.splitlines():
        if re.match(r"^\w+:$", line):
            section = line[:-1]
        elif line.startswith("  ") and section != "data":
            assert "  # " in line, f"planned value without its reason: {line!r}"
    assert "# no sampling: section: rare: sign 0.70 %, bike 0.30 %" in text
    # written elsewhere, the plan names the data's folder, so it still loads to the same config
    other = tmp_path / "elsewhere"
    other.mkdir()
    assert C.load_config(P.write_plan(p, other / "x.plan.yaml")) == p.config


def test_plan_without_a_data_section_or_a_folder_that_matches_nothing_says_so(tmp_path, capsys):
    (tmp_path / "x.yaml").write_text("batching: {batch_size: 2}\n")
    assert P.main(["--config", str(tmp_path / "x.yaml")]) == 2
    assert "x.yaml: the recipe has no data: section to plan from; start from pipelines/folder.yaml" in capsys.readouterr().err
    (tmp_path / "y.yaml").write_text("data: {source: folder, images: 'nowhere/*.png', masks: 'm/{stem}.png'}\n")
    assert P.main(["--config", str(tmp_path / "y.yaml")]) == 2
    assert "no files match the image glob 'nowhere/*.png'" in capsys.readouterr().err
    assert P.main(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "missing.yaml: recipe file not found" in capsys.readouterr().err


def test_train_keeps_a_recipe_with_model_or_train_sections():
    cfg = C.load_config_text("data: {source: shapes}\nmodel: {width: 4}", name="r.yaml")
    assert P.plan_for_training(cfg) is cfg
    built = C.Config()
    assert P.plan_for_training(built) is built  # built in Python: given is None


# ---------------------------------------------------------------------------- end to end

SIZES = [(129, 141), (137, 161)]  # min side 129: depth 5, the stride every model of this branch has


def _write_folder(root, n, split, seed):
    rng = np.random.default_rng(seed)
    for d in (f"images/{split}", f"masks/{split}"):
        (root / d).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        h, w = SIZES[i % 2]
        label = np.zeros((h, w), np.uint8)
        label[:, w // 4: w // 2] = 1
        label[:, w // 2: 3 * w // 4] = 2
        label[h // 2:, 3 * w // 4:] = 3
        label[10:15, 10:15] = 4  # 25 px of ~20k: the rare class
        label[0, :] = 255  # one ignored row
        image = (label.astype(np.float64) * 40 + rng.normal(60, 10, (h, w))).clip(0, 255).astype(np.uint8)
        cv2.imwrite(str(root / f"images/{split}/{split}{i}.png"), image)
        cv2.imwrite(str(root / f"masks/{split}/{split}{i}.png"), label)


def test_fingerprint_of_a_folder_reads_sizes_classes_and_intensities(tmp_path):
    _write_folder(tmp_path, 4, "train", 0)
    data = C.DataConfig(source="folder", images="images/train/*.png", masks="masks/train/{stem}.png",
                        num_classes=5, channels=1, root=str(tmp_path))
    f = fingerprint(data)
    assert (f.num_train, f.num_val, f.dtype, f.num_shapes) == (4, 0, "uint8", 2)
    assert f.height == (129.0, 133.0, 137.0) and f.width == (141.0, 151.0, 161.0)
    assert 0 < f.class_frequency[4] < 0.01 and f.images_with_class == (4, 4, 4, 4, 4)
    assert 0 < f.ignore_fraction < 0.01 and f.intensity["p99.5"] > f.intensity["p0.5"]
    assert f.foreground["mean"] > f.intensity["mean"]  # foreground is brighter by construction
    assert Fingerprint.from_json(f.to_json()) == f


def test_plan_then_train_a_folder_end_to_end(tmp_path, capsys):
    from fcndata.train import main as train_main

    _write_folder(tmp_path, 8, "train", 0)
    _write_folder(tmp_path, 3, "val", 1)
    recipe = tmp_path / "my_data.yaml"
    recipe.write_text(yaml.safe_dump({"data": {
        "source": "folder", "images": "images/train/*.png", "masks": "masks/train/{stem}.png",
        "val_images": "images/val/*.png", "val_masks": "masks/val/{stem}.png", "num_classes": 5, "channels": 1,
        "class_names": list(NAMES)}}))
    assert P.main(["--config", str(recipe), "--minutes", "0.5"]) == 0
    out = capsys.readouterr().out
    assert "model.depth" in out and f"plan written to {tmp_path / 'my_data.plan.yaml'}" in out
    written = tmp_path / "my_data.plan.yaml"
    text = written.read_text()
    # the comments name the facts: the rare class and its share, the image sizes, the time
    assert re.search(r"rare: bike 0\.\d\d %", text), text
    assert "min side 129 px" in text and "137x161" in text and "0.5 minutes" in text
    cfg = C.load_config(written)
    assert cfg.train.seconds == 30.0 and cfg.sampling.class_weights == "median_frequency"
    assert cfg.model.depth == 5 and cfg.batching.pad_to_multiple == 32
    assert cfg.augment is None and "< 180 s" in text  # few images, but half a minute: no augmentation

    sets = ["train.epochs=1", "train.steps_per_epoch=2", "train.validation_steps=1", "train.verbose=0",
            f"train.run_dir={tmp_path / 'runs'}", "train.name=run"]
    assert train_main(["--config", str(recipe), *(a for s in sets for a in ("--set", s))]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == (f"fcndata: {recipe} has no model:/train: sections: training the plan "
                        f"(python -m fcndata.plan --config {recipe} writes it with its reasons)")
    assert lines[-1].startswith(f"fcndata: results in {tmp_path / 'runs' / 'run'}")
    run = C.load_config(tmp_path / "runs" / "run" / "config.yaml")
    assert {"model", "train"} <= run.given  # --resume trains this config, not a new plan
    assert run.model == cfg.model and run.sampling == cfg.sampling and run.train.steps_per_epoch == 2


def test_command_line_overrides_win_over_the_rules_and_say_so():
    p = P.plan(folder_config(), fingerprint=fp(), budget=CPU, overrides=["model.width=4", "patches.mode=balanced"])
    assert p.config.model.width == 4 and p.reasons["model.width"] == "--set model.width on the command line"
    assert p.config.patches.mode == "balanced"  # a section the rules left out, created by the override
    with pytest.raises(C.ConfigError, match=r"unknown key 'widht' in section 'model'; did you mean 'width'"):
        P.plan(folder_config(), fingerprint=fp(), budget=CPU, overrides=["model.widht=4"])


def test_a_16_bit_folder_with_an_offset_is_clipped_to_its_foreground(tmp_path):
    rng = np.random.default_rng(0)
    for d in ("i", "m"):
        (tmp_path / d).mkdir()
    for k in range(3):
        label = np.zeros((41, 53), np.uint8)
        label[:, 20:] = 1 + np.arange(53 - 20)[None, :] % 4
        image = 30000 + label.astype(np.uint16) * 500 + rng.integers(0, 50, label.shape).astype(np.uint16)
        cv2.imwrite(str(tmp_path / "i" / f"{k}.png"), image)
        cv2.imwrite(str(tmp_path / "m" / f"{k}.png"), label)
    recipe = tmp_path / "ct.yaml"
    recipe.write_text("data: {source: folder, images: 'i/*.png', masks: 'm/{stem}.png', num_classes: 5, channels: 1}\n")
    p = P.plan(C.load_config(recipe), budget=CPU)
    assert p.fingerprint.dtype == "uint16" and 30000 <= p.fingerprint.intensity["p0.5"] < 30050
    low, high = p.config.model.clip
    assert 30500 <= low < 30550 and 32000 <= high < 32050 and p.config.data.image_dtype == "uint16"
    assert C.load_config(P.write_plan(p, tmp_path / "ct.plan.yaml")) == p.config
