"""benchmarks/peers.py (`make bench-peers`): the fcndata rows on tiny data, and the patch
check that every row of PEERS.md relies on. No torch needed: the MONAI and TorchIO rows
run only in `make bench-peers`, in their own venv."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _workloads():
    spec = importlib.util.spec_from_file_location("peer_workloads", ROOT / "benchmarks" / "peer_workloads.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _table(text: str) -> list[dict]:
    lines = [line for line in text.splitlines() if line.startswith("| ")]
    columns = [c.strip() for c in lines[0].strip("|").split("|")]
    return [dict(zip(columns, (c.strip() for c in line.strip("|").split("|")))) for line in lines[1:]]


def test_quick_fcndata_rows_are_checked_and_measured(tmp_path):
    out = tmp_path / "PEERS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick", "--tools", "fcndata", "--out", str(out)],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    text = out.read_text()
    assert "Written by `python benchmarks/peers.py --quick --tools fcndata --out " in text  # not `make bench-peers`
    rows = _table(text)
    w = _workloads()
    for name in w.WORKLOADS:  # every run says where its time went
        line = next(x for x in text.splitlines() if x.startswith(f"- {name} · fcndata"))
        assert " s CPU, " in line and " faults)" in line, line
    assert [(r["workload"], r["tool"]) for r in rows] == [(name, "fcndata") for name in w.WORKLOADS]
    for r in rows:
        assert r["check"] == "ok", r
        assert float(r["rate (items/s, median)"].replace(",", "")) > 0, r
        float(r["peak memory over baseline (MiB, largest)"].replace(",", ""))  # a number, not "—"


def test_without_peers_python_the_peer_rows_are_skipped_with_a_message(tmp_path):
    out = tmp_path / "PEERS.md"
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--quick", "--only", "grid512", "--out", str(out),
         "--peers-python", str(tmp_path / "missing" / "python")],
        capture_output=True, text=True, timeout=300, cwd=ROOT,
    )
    assert run.returncode == 0, run.stdout + run.stderr
    assert "MONAI and TorchIO rows skipped" in run.stderr and "make bench-peers" in run.stderr
    assert [r["tool"] for r in _table(out.read_text())] == ["fcndata"]


def test_check_patch_accepts_the_slice_and_flags_a_corrupted_patch():
    w = _workloads()
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (37, 53, 3), dtype=np.uint8)
    label = rng.integers(0, 4, (37, 53), dtype=np.uint8)
    patch, patch_label = image[5:21, 7:23].copy(), label[5:21, 7:23].copy()
    assert w.check_patch(image, label, (5, 7), patch, patch_label) == "ok"
    assert w.check_patch(image, label, (5, 8), patch, patch_label).startswith("image patch at origin (5, 8) differs")
    patch[3, 4, 1] ^= 1
    assert w.check_patch(image, label, (5, 7), patch, patch_label) == (
        "image patch at origin (5, 7) differs from the source in 1 values")
    patch_label[0, 0] = (patch_label[0, 0] + 1) % 4
    assert "label patch" in w.check_patch(image, label, (5, 7), image[5:21, 7:23], patch_label)
    assert "not inside" in w.check_patch(image, label, (30, 7), image[21:37, 7:23], label[21:37, 7:23], inside=True)


def test_check_stitched_flags_a_wrong_output():
    w = _workloads()
    image = np.random.default_rng(2).integers(0, 256, (19, 23, 3), dtype=np.uint8)
    out = image.astype(np.float32) / 255
    assert w.check_stitched(out, image) == "ok"
    out[4, 5, 2] += 1e-3
    assert w.check_stitched(out, image).startswith("output differs from the input by up to 0.001")


def _driver():
    spec = importlib.util.spec_from_file_location("peers_driver", ROOT / "benchmarks" / "peers.py")
    driver = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(driver)
    return driver


def test_the_file_names_the_command_that_wrote_it():
    command = _driver()._command
    assert command(["--peers-python", ".venv-peers/bin/python"]) == "make bench-peers"
    assert command(["--only", "sliding8192", "--tools", "fcndata,monai", "--peers-python", "p"]) == (
        "python benchmarks/peers.py --only sliding8192 --tools fcndata,monai --peers-python p")
    assert command(["--rounds", "5"]) == "python benchmarks/peers.py --rounds 5"


def test_scale_multiplies_the_patches_of_grid_and_balanced_only(tmp_path):
    w = _workloads()
    assert [w.workload_spec(n, False, 3)["passes"] for n in ("grid512", "balanced512", "grid8192")] == [12, 12, 3]
    assert w.workload_spec("balanced8192", False, 3)["per_image"] == 3 * w.workload_spec("balanced8192", False)["per_image"]
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "peers.py"), "--scale", "2", "--tools", "fcndata",
                          "--out", str(tmp_path / "P.md")], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert run.returncode == 2 and "--scale 2" in run.stderr and "--only" in run.stderr, run.stderr
    assert not (tmp_path / "P.md").exists()


def test_repeated_runs_give_the_median_rate_the_largest_memory_and_any_failure():
    driver = _driver()
    runs = [dict(rate=r, peak_mib=m, check="ok") for r, m in ((300.0, 10.0), (100.0, 30.0), (200.0, 20.0))]
    row = driver._median_row(runs)
    assert (row["rate"], row["peak_mib"], row["check"], row["runs"]) == (200.0, 30.0, "ok", "300, 100, 200")
    runs[1]["check"] = "image patch at origin (0, 0) differs from the source in 3 values"
    assert driver._median_row(runs)["check"] == runs[1]["check"]
