"""The experiment driver (fcndata.experiments) and the benchmark runner's RESULTS writer.

One real comparison on tiny ``shapes`` (2 settings x 1 seed, a few steps); the paragraphs
and the benchmark tables are checked on made-up results, where the right text is known.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from fcndata.config import load_config
from fcndata.experiments import balance, panel, patchwise
from fcndata.experiments.compare import Setting, differences, lr_at, resolve
from fcndata.experiments.report import markdown, summarize, versus

ROOT = Path(__file__).resolve().parent.parent
TINY = ["data.num_images=4", "data.val_num_images=2", "data.min_size=32", "data.max_size=40", "model.width=4",
        "model.variant=fcn32s", "batching.pad_to_multiple=32"]  # the smallest graph: tracing it is most of a run's time


def test_patchwise_on_shapes_writes_table_plot_and_paragraph_from_the_runs(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "exp"
    argv = ["--config", "pipelines/shapes.yaml", "--seconds", "30", "--max-steps", "4", "--eval-points", "2",
            "--seeds", "0", "--only", "whole_images", "loss_sampling_p0.5", "--out", str(out)]
    for o in TINY:
        argv += ["--set", o]
    assert patchwise.main(argv) == 0
    assert "[2/2] loss_sampling_p0.5, seed 0" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert [r["setting"] for r in results["runs"]] == ["whole_images", "loss_sampling_p0.5"]
    for r in results["runs"]:
        assert r["steps"] == 4 and 0 < r["seconds"] < 30  # --max-steps ended the runs, not the budget
        assert len(r["curve"]) == 2 and r["curve"][-1]["steps"] == 4  # one evaluation at half, one at the end
        assert 0.0 <= r["mean_iou"] <= 1.0 and r["mean_iou"] == r["curve"][-1]["mean_iou"]
    text = (out / "RESULTS.md").read_text()
    whole, sampled = results["runs"]
    row = next(line for line in text.splitlines() if line.startswith("| loss_sampling_p0.5 | 1 |"))
    assert f"| {sampled['mean_iou']:.3f} |" in row and f"| {sampled['steps']} |" in row
    assert "python -m fcndata.experiments.patchwise --config pipelines/shapes.yaml" in text
    assert "`sampling.loss_keep_probability=0.5`" in text
    # the setting's own batch size is listed where it differs from the base recipe's (shapes: 8)
    sampled_batch = load_config(ROOT / "pipelines" / "brain_loss_sampling_p50.yaml").batching.batch_size
    assert ("`batching.batch_size=" in text) == (sampled_batch != load_config(ROOT / "pipelines" / "shapes.yaml").batching.batch_size)
    # the paragraph states the measured order
    word = versus([sampled["mean_iou"]], [whole["mean_iou"]])
    assert f"final {sampled['mean_iou']:.3f}, {word} whole images" in text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_panel_plans_and_trains_two_datasets_and_writes_a_row_each(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(ROOT)
    out = tmp_path / "panel"
    argv = ["--datasets", "shapes,phantom", "--seconds", "4", "--seeds", "1", "--max-steps", "3", "--eval-points", "1",
            "--out", str(out)]
    # tiny data; depth 5 / pad 32 / width 4: the smallest graph to trace, whatever depth the plan picks
    for o in ["data.num_images=4", "data.val_num_images=2", "data.min_size=40", "data.max_size=48",
              "model.depth=5", "batching.pad_to_multiple=32", "model.width=4"]:
        argv += ["--set", o]
    assert panel.main(argv) == 0
    assert "[2/2] unet, seed 0" in capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert list(results["datasets"]) == ["shapes", "phantom"] and results["seconds"] == {"shapes": 1.3, "phantom": 4.0}
    text = (out / "RESULTS.md").read_text()
    for name in ("shapes", "phantom"):
        runs = results["datasets"][name]["runs"]
        assert [r["setting"] for r in runs] == ["plan", "unet"] and all(r["steps"] == 3 for r in runs)
        plan_run, unet_run = runs
        row = next(line for line in text.splitlines() if line.startswith(f"| {name} | "))
        assert f"| {plan_run['mean_iou']:.3f} | {unet_run['mean_iou']:.3f} | plan " in row
        assert f"## {name}" in text and (out / "plans" / f"{name}.yaml").is_file() and (out / name / "RESULTS.md").is_file()
        # the data section the plan saw carries the overrides; the plan is the one the panel trained
        assert load_config(out / "recipes" / f"{name}.yaml").data.num_images == 4
    assert "| `model.clip` | `[" in text  # phantom: 16-bit, so the plan clips
    assert "python -m fcndata.experiments.panel --datasets shapes,phantom" in text
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # --update reruns one dataset and keeps the other's row from the earlier run
    phantom_before = results["datasets"]["phantom"]
    update = [a if a != "shapes,phantom" else "shapes" for a in argv] + ["--update"]
    assert panel.main(update) == 0
    again = json.loads((out / "results.json").read_text())
    assert list(again["datasets"]) == ["shapes", "phantom"] and again["datasets"]["phantom"] == phantom_before
    assert again["updates"][0][1] == ["shapes"]
    assert "reran shapes (`--update`" in (out / "RESULTS.md").read_text()


def test_panel_budgets_epochs_and_flags(capsys):
    assert panel.main(["--datasets", "scenes,mri"]) == 2
    assert ("error: panel: datasets must be some of ['brain', 'digits', 'shapes', 'scenes', 'phantom']. "
            "Received: --datasets scenes,mri") in capsys.readouterr().err
    assert panel.budgets(list(panel.SECONDS)) == panel.SECONDS
    # the default panel: 2 arms x 3 seeds of training stays within ~35 of its ~45 minutes
    assert 6 * sum(panel.SECONDS.values()) <= 35 * 60
    assert set(panel.RECIPES) == set(panel.SECONDS) == set(panel.ABOUT)
    cfg = load_config(ROOT / "pipelines" / "shapes.yaml", ["patches.mode=random", "patches.patch_size=32",
                                                           "patches.num_per_image=5"])
    assert panel.items_per_epoch(cfg, [(50, 60)] * 3) == 15
    grid = load_config(ROOT / "pipelines" / "shapes.yaml", ["patches.mode=grid", "patches.patch_size=32",
                                                            "patches.stride=16"])
    assert panel.items_per_epoch(grid, [(48, 64)]) == 2 * 3
    assert panel.items_per_epoch(load_config(ROOT / "pipelines" / "shapes.yaml"), [(50, 60)] * 3) == 3
    with pytest.raises(ValueError, match=r"Setting 'p': a ready config is trained by fcndata as it is"):
        Setting("p", "pipelines/shapes.yaml", config=cfg)
    assert resolve(Setting("p", config=cfg), "pipelines/brain_fullimage.yaml", ["model.width=4"]) is cfg


def _fake(finals: dict, steps: dict, s_per_step: dict, classes=("background", "a", "b"), fraction=(0.75, 0.2, 0.05),
          per_class=None) -> dict:
    """Results as compare() returns them: one run per value in ``finals[name]``."""
    runs = []
    for name, values in finals.items():
        for seed, v in enumerate(values):
            n = steps[name]
            pc = (per_class or {}).get(name, {c: v for c in classes})
            runs.append({"setting": name, "seed": seed, "mean_iou": v, "per_class_iou": pc, "steps": n,
                         "seconds": 60.0, "s_per_step": s_per_step[name], "eval_s": 1.0, "compile_s": 2.0,
                         "curve": [{"seconds": 30.0, "steps": n // 2, "mean_iou": v / 2, "per_class_iou": pc},
                                   {"seconds": 60.0, "steps": n, "mean_iou": v, "per_class_iou": pc}]})
    return {"settings": [{"name": n, "about": n, "trainer": "fcndata", "recipe": "r.yaml", "overrides": [],
                          "differences": []} for n in finals],
            "runs": runs, "class_names": list(classes), "class_fraction": list(fraction), "seconds": 60,
            "seeds": [0, 1], "eval_points": 2, "base": "pipelines/brain_fullimage.yaml", "overrides": [],
            "machine_start": {"cpu": "cpu", "cores": 2, "python": "3", "platform": "linux", "date": "today",
                              "load_average": [1.0, 1.0, 1.0]}}


def test_patchwise_paragraph_follows_the_numbers():
    # the paper's outcome: sampling slower per step, not better per iteration; balancing no help
    paper = _fake({"whole_images": [0.80, 0.82], "loss_sampling_p0.5": [0.70, 0.72], "class_weights": [0.79, 0.81]},
                  {"whole_images": 100, "loss_sampling_p0.5": 100, "class_weights": 100},
                  {"whole_images": 0.5, "loss_sampling_p0.5": 1.0, "class_weights": 0.5})
    text = patchwise.paragraph(summarize(paper), paper)
    assert "Loss sampling did not converge faster per iteration, as the paper found" in text
    assert "loss_sampling_p0.5 2.00× (100 iterations, final 0.710, below whole images)" in text
    assert "as in the paper it cost wall-clock" in text
    assert "class_weights ended at 0.800, level with whole images" in text
    assert "with background 75 % of the training pixels" in text and "bought nothing beyond the seed spread" in text
    # the opposite outcome reads the opposite way
    other = _fake({"whole_images": [0.60, 0.62], "loss_sampling_p0.5": [0.80, 0.82], "class_weights": [0.70, 0.71]},
                  {"whole_images": 100, "loss_sampling_p0.5": 100, "class_weights": 100},
                  {"whole_images": 0.5, "loss_sampling_p0.5": 0.4, "class_weights": 0.5})
    text = patchwise.paragraph(summarize(other), other)
    assert "converged faster per iteration than whole images, unlike the paper" in text
    assert "unlike the paper it cost no wall-clock per step" in text
    assert "balancing helped the mean IoU, unlike the paper's finding" in text
    assert "one seed" not in text  # two seeds each: the spread was measured
    mixed = _fake({"whole_images": [0.60, 0.62], "loss_sampling_p0.5": [0.80, 0.82], "loss_sampling_p0.25": [0.5, 0.5]},
                  {"whole_images": 100, "loss_sampling_p0.5": 100, "loss_sampling_p0.25": 100},
                  {"whole_images": 0.5, "loss_sampling_p0.5": 1.0, "loss_sampling_p0.25": 2.0})
    text = patchwise.paragraph(summarize(mixed), mixed)
    assert ("Per iteration, loss_sampling_p0.5 converged faster than whole images (unlike the paper), "
            "loss_sampling_p0.25 did not") in text


def test_balance_paragraph_names_the_rarest_classes_and_the_winner():
    pc = {"base": {"background": 0.9, "a": 0.5, "b": 0.1}, "focal": {"background": 0.9, "a": 0.5, "b": 0.4}}
    results = _fake({"base": [0.5], "focal": [0.6]}, {"base": 10, "focal": 10}, {"base": 1.0, "focal": 1.0},
                    per_class=pc)
    assert balance.rare_classes(results) == ["b", "a", "background"]
    text = balance.paragraph(summarize(results), results)
    assert "(b 5.00 %, a 20.00 %, background 75.00 % of the training pixels)" in text
    assert "focal 0.600 (above the base" in text and "Best for the rare classes: focal, +0.100" in text
    assert "one seed per setting no spread was measured" in text


def test_markdown_table_has_one_row_per_setting_with_its_numbers():
    results = _fake({"a": [0.5, 0.7], "b": [0.4, 0.45]}, {"a": 10, "b": 20}, {"a": 1.0, "b": 0.5})
    text = markdown(results, "T", "P")
    header = next(line for line in text.splitlines() if line.startswith("| setting | seeds |"))
    separator = text.splitlines()[text.splitlines().index(header) + 1]
    assert header.count("|") == separator.count("|")
    assert "| a | 2 | 0.600 ± 0.141 (0.500–0.700) |" in text and "| b | 2 | 0.425 ± 0.035 (0.400–0.450) |" in text


def test_settings_share_the_base_data_and_model_and_list_what_differs():
    setting = Setting("p", "pipelines/brain_grid_patches.yaml")
    config = resolve(setting, "pipelines/shapes.yaml", ["model.width=4"])
    base = resolve(Setting("base"), "pipelines/shapes.yaml", ["model.width=4"])
    assert config.data == base.data and config.model == base.model and config.model.width == 4
    diff = differences(config, base)
    assert "patches.mode=grid" in diff and "patches.patch_size=[64, 64]" in diff and "batching.batch_size=32" in diff
    assert not any(d.startswith("train.epochs") for d in diff)  # the budget replaces epochs
    with pytest.raises(ValueError, match=r"Setting 'x': trainer must be one of \['fcndata', 'unet'\]"):
        Setting("x", trainer="keras")


def test_every_setting_recipe_loads_and_trains_the_base_model():
    from fcndata.config import load_config

    for preset, base in ((patchwise, "pipelines/brain_fullimage.yaml"), (balance, "pipelines/digits_fullimage.yaml")):
        for s in preset.SETTINGS:
            if s.recipe:
                own = load_config(ROOT / s.recipe)
                assert own.model == load_config(ROOT / base).model, f"{s.recipe}: model differs from {base}"


def test_time_schedule_ends_at_zero_and_warms_up_by_steps():
    from fcndata.config import load_config_text

    cfg = load_config_text("train: {learning_rate: 0.1, schedule: poly, warmup_steps: 4}")
    assert lr_at(cfg, 0.0, 2) == pytest.approx(0.05) and lr_at(cfg, 1.0, 10) == 0.0
    assert lr_at(load_config_text("train: {learning_rate: 0.1}"), 0.9, 10) == 0.1


# ---------------------------------------------------------------------------- make bench


def _run_all():
    spec = importlib.util.spec_from_file_location("bench_run_all", ROOT / "benchmarks" / "run_all.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_run_all_renders_every_benchmark_table_with_memory_and_machine():
    run_all = _run_all()
    records = [
        {"name": "batching", "seconds": 12.5, "peak_rss_mib": 812.4, "status": "ok", "output": "raw lines",
         "tables": [{"title": "images/s", "columns": ["strategy", "images/s", "ratio"],
                     "rows": [["plain", 1000.0, 1.0], ["bucket", 1500.0, 1.5]], "notes": ["ratio to plain"]}]},
        {"name": "service", "seconds": 3.0, "peak_rss_mib": 300.0, "status": "failed (exit 1)", "output": "boom",
         "tables": []},
    ]
    text = run_all.render(records, command="python benchmarks/run_all.py", machine_start={
        "cpu": "EPYC", "cores": 2, "python": "3.11", "platform": "linux", "date": "d", "load_average": [1, 2, 3]})
    assert "`python benchmarks/run_all.py`" in text and "EPYC, 2 cores" in text
    assert "| batching | ok | 12 | 812 |" in text and "| service | failed (exit 1) | 3 | 300 |" in text
    assert "| strategy | images/s | ratio |" in text and "| bucket | 1500 | 1.50 |" in text
    assert "ratio to plain" in text and "boom" in text
    # a benchmark whose main() returns a dict of dicts becomes a table too
    tables = run_all.tables_from_return({"512: grid": {"patches_per_s": 2.0e4, "share": 0.31}}, "patches")
    assert tables[0]["columns"] == ["patches", "patches_per_s", "share"]
    assert tables[0]["rows"] == [["512: grid", 2.0e4, 0.31]]


def test_baseline_unet_benchmark_uses_the_package_unet():
    spec = importlib.util.spec_from_file_location("bench_baseline", ROOT / "benchmarks" / "baseline_unet.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    from fcndata.experiments import baseline

    assert module.unet is baseline.unet and module.load_arrays is baseline.load_arrays
