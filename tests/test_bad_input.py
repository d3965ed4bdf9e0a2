"""Bad input, end to end: one finding of issue 12 per test, tiny files generated here.

Each test asserts the exit status, the one line that names the file, and what is skipped.
Commands run in-process (``main(argv)`` + capsys); one subprocess measures the peak memory
of a decompression bomb. The README's bad-input table links each row to a test here.
"""

from __future__ import annotations

import csv
import json
import os
import re
import struct
import subprocess
import sys
import zlib
from pathlib import Path

import cv2
import numpy as np
import pytest
import tensorflow as tf
from conftest import write, write_raw_tiff

from fcndata import decode
from fcndata import sources as S

ROOT = Path(__file__).resolve().parent.parent
H, W = 37, 53


def _one_error_line(err: str) -> str:
    """The single `error:` line of stderr; other lines allowed: `fcndata:` progress, `skipped:`, indented lists."""
    lines = [ln for ln in err.strip().splitlines() if not ln.startswith(("fcndata: ", "skipped: ", "  "))]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


def _stripes(h=H, w=W) -> np.ndarray:
    return np.repeat((np.arange(w) * 3 // w)[None].astype(np.uint8), h, 0)


def _image(seed=0, h=H, w=W, dtype=np.uint8) -> np.ndarray:
    top = 255 if dtype == np.uint8 else 65535
    return np.random.default_rng(seed).integers(0, top, (h, w, 3), dtype=dtype)


def _recipe(tmp_path: Path, lines=(), images="img/*.png", masks="msk/{stem}.png", name="r.yaml") -> Path:
    text = ["data:", "  source: folder", f"  images: '{images}'", f"  masks: '{masks}'", "  num_classes: 3",
            *lines, "batching: {batch_size: 2}", "model: {variant: fcn32s, width: 4}",
            f"train: {{epochs: 1, verbose: 0, run_dir: '{tmp_path / 'runs'}', name: r}}"]
    recipe = tmp_path / name
    recipe.write_text("\n".join(text) + "\n")
    return recipe


def _folder(root: Path, n=3, ext=".png") -> Path:
    (root / "img").mkdir(parents=True, exist_ok=True)
    (root / "msk").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        write(root / "img" / f"{i}{ext}", _image(i))
        write(root / "msk" / f"{i}.png", _stripes())
    return root


def _truncate(path: Path) -> Path:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    return path


# ---------------------------------------------------------------------------- 1. lossy masks


def test_jpeg_masks_are_refused_and_named_with_the_format_to_use(tmp_path, capsys):
    from fcndata.inspect import main

    _folder(tmp_path)
    for i in range(3):
        write(tmp_path / "msk" / f"{i}.jpg", _stripes())
    recipe = _recipe(tmp_path, masks="msk/{stem}.jpg")
    assert main(["--config", str(recipe)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: folder source: 3 image/mask pair(s) cannot be used"), line
    assert f"mask {tmp_path / 'msk' / '0.jpg'} is a JPEG file; JPEG is lossy" in line and "Export masks as PNG" in line
    # skip: every pair has a JPEG mask, so nothing is left, and inspect says so (not "0 images", exit 0)
    assert main(["--config", str(recipe), "--set", "data.on_error=skip"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: folder source: no usable file: all 3 image/mask pair(s) were refused"), line


def test_a_png_mask_with_jpeg_ringing_is_named_as_such(tmp_path):
    _folder(tmp_path, n=2)
    mask = _stripes()
    mask[:, [17, 35]] = 255  # ignore_label boundaries, as in VOC
    ok, jpeg = cv2.imencode(".jpg", mask, [cv2.IMWRITE_JPEG_QUALITY, 75])
    write(tmp_path / "msk" / "1.png", cv2.imdecode(jpeg, cv2.IMREAD_UNCHANGED))  # saved as JPEG once, then PNG
    bad = np.full((H, W), 7, np.uint8)  # one wrong value: an out-of-range label, not ringing
    write(tmp_path / "img" / "2.png", _image(2))
    write(tmp_path / "msk" / "2.png", bad)
    it = iter(S.from_folder("img/*.png", "msk/{stem}.png", channels=3, num_classes=3, root=str(tmp_path)))
    next(it)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask .*1.png has \d+ pixel\(s\) of \d+ distinct values "
                       r"outside \[0, 3\), nearly all next to a class id or ignore_label=255: this looks like JPEG "
                       r"compression ringing.*Re-export the mask losslessly \(PNG\)"):
        next(it)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask .*2.png has label values outside \[0, 3\) that "
                       r"are not ignore_label=255.*label_value=7"):
        next(it)


# ---------------------------------------------------------------------------- 2. decompression bombs


def png_bomb(path, side=30000) -> int:
    """A gray 8-bit PNG of side × side zeros, ~1/1030 of its decoded size (870 KB for 30000²).

    Written in milliseconds: the deflate stream is one dynamic-Huffman block whose only
    symbols are literal 0, end-of-block and "copy 258 bytes at distance 1", each copy coded
    in 2 zero bits, so the bulk of the stream is zero bytes. It decodes (OpenCV: 900 MB).
    """
    bits: list[int] = []

    def put(value, n):  # header fields and extra bits: LSB first
        bits.extend((value >> i) & 1 for i in range(n))

    def code(c):  # Huffman codes: MSB first
        bits.extend(int(b) for b in c)

    put(1, 1), put(2, 2)  # last block, dynamic Huffman
    put(29, 5), put(0, 5), put(14, 4)  # 286 literal/length codes, 1 distance code, 18 code-length codes
    lengths = {18: 1, 2: 2, 1: 2}  # code-length alphabet: 18 -> '0', 1 -> '10', 2 -> '11'
    for s in (16, 17, 18, 0, 8, 7, 9, 6, 10, 5, 11, 4, 12, 3, 13, 2, 14, 1):
        put(lengths.get(s, 0), 3)
    code("11")  # literal 0 has length 2
    code("0"), put(138 - 11, 7)  # 1..138 unused
    code("0"), put(117 - 11, 7)  # 139..255 unused
    code("11")  # 256 (end of block): length 2
    code("0"), put(28 - 11, 7)  # 257..284 unused
    code("10")  # 285 (copy 258): length 1
    code("10")  # distance code 0 (distance 1): length 1
    # literal/length codes: 285 -> '0', 0 -> '10', 256 -> '11'; distance 0 -> '0'
    raw = side * (side + 1)  # a filter byte and `side` zero pixels per row
    copies, rest = divmod(raw - 1, 258)
    code("10")  # the first zero, as a literal
    head = len(bits)
    tail = [int(b) for b in "10" * rest + "11"]
    out = bytearray((head + 2 * copies + len(tail) + 7) // 8)
    for i, b in list(enumerate(bits)) + [(head + 2 * copies + j, b) for j, b in enumerate(tail)]:
        out[i >> 3] |= b << (i & 7)
    idat = b"\x78\x01" + bytes(out) + struct.pack(">I", ((raw % 65521) << 16) | 1)

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0))
           + chunk(b"IDAT", idat) + chunk(b"IEND", b""))
    Path(path).write_bytes(png)
    return len(png)


def test_the_png_bomb_is_a_real_png(tmp_path):
    size = png_bomb(tmp_path / "small.png", side=301)
    small = cv2.imread(str(tmp_path / "small.png"), cv2.IMREAD_UNCHANGED)
    assert small.shape == (301, 301) and not small.any() and size < 400


_BOMB = r"""
import json, re, sys
import numpy as np, tensorflow as tf

def peak_mib():
    return int(re.search(r"VmHWM:\s+(\d+)", open("/proc/self/status").read()).group(1)) / 1024

from fcndata import decode
from fcndata.inspect import main as inspect_main
good, bomb_recipe, bomb, tiff = sys.argv[1:5]
assert inspect_main(["--config", good]) == 0  # warm-up: TensorFlow's own start-up is in the baseline
base = peak_mib()
out = {"raise": inspect_main(["--config", bomb_recipe]),
       "skip": inspect_main(["--config", bomb_recipe, "--set", "data.on_error=skip"])}
try:
    decode.read_image(bomb, 3)
except ValueError as e:
    out["read_image"] = str(e)
data = open(bomb, "rb").read()
out["cv2_error"] = int(decode._cv2_error(data, b"uint8", b"none", decode.DEFAULT_MAX_PIXELS))
out["cv2_error_tiff"] = int(decode._cv2_error(open(tiff, "rb").read(), b"uint8", b"none", decode.DEFAULT_MAX_PIXELS))
try:  # the graph's own check, for a caller that skipped the header scan
    decode.decode_file(tf.constant(bomb), tf.constant(0), tf.uint8, (0,))
except tf.errors.InvalidArgumentError:
    out["decode_file"] = int(decode.file_error(tf.constant(bomb), tf.constant(0), tf.uint8, (0, 2)))
out["added_mib"] = peak_mib() - base
print(json.dumps(out))
"""


def _tiff_declaring(path, side=30000):
    """A TIFF whose header declares side × side 8-bit gray pixels (with a few bytes of data)."""
    write_raw_tiff(path, np.zeros((4, 4, 1), np.uint8))
    data = bytearray(Path(path).read_bytes())
    for tag in (256, 257):  # ImageWidth, ImageLength (LONG values, little-endian)
        at = data.index(struct.pack("<HHI", tag, 4, 1))
        data[at + 8 : at + 12] = struct.pack("<I", side)
    Path(path).write_bytes(bytes(data))


def test_a_decompression_bomb_is_refused_from_its_header_with_bounded_memory(tmp_path):
    good = _folder(tmp_path / "good", n=2)
    bombs = _folder(tmp_path / "bombs", n=2)
    size = png_bomb(bombs / "img" / "9.png")
    write(bombs / "msk" / "9.png", _stripes())
    assert 0.5e6 < size < 3e6
    # A TIFF puts the OpenCV fallback into the graph; without its header check, explaining the
    # bomb's failed decode decodes it (measured: +1726 MiB with data.max_pixels=null).
    write(bombs / "img" / "t.tif", _image(5))
    write(bombs / "msk" / "t.png", _stripes())
    _tiff_declaring(tmp_path / "bomb.tif")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", _BOMB, str(_recipe(good)), str(_recipe(bombs, images="img/*")),
                          str(bombs / "img" / "9.png"), str(tmp_path / "bomb.tif")],
                         capture_output=True, text=True, env=env, timeout=600, check=False)
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    bomb = bombs / "img" / "9.png"
    errors = [ln for ln in out.stderr.splitlines() if ln.startswith("error: ")]
    assert errors == [f"error: folder source: image {bomb} is 30000x30000 pixels (height x width, from its header), "
                      "more than data.max_pixels=400000000, so it was not decoded (a decompression bomb, or a scan too "
                      "large for memory). Raise data.max_pixels if the image is real and fits in memory, or tile it, "
                      "or set data.on_error=skip to skip it. Received: size=30000x30000"], out.stderr
    assert result["raise"] == 2 and result["skip"] == 0  # skip: the other three images are inspected
    assert "3 images" in out.stdout and f"{bomb}: folder source: image {bomb} is 30000x30000" in out.stdout
    assert result["read_image"].startswith(f"predict: image {bomb} is 30000x30000 pixels")
    assert result["cv2_error"] == result["cv2_error_tiff"] == result["decode_file"] == decode.TOO_LARGE
    assert result["added_mib"] < 200, result  # decoding it would add ~860 MiB


def test_max_pixels_is_configurable_and_checked(tmp_path, capsys):
    from fcndata.inspect import main

    _folder(tmp_path, n=2)
    recipe = _recipe(tmp_path)
    assert main(["--config", str(recipe), "--set", "data.max_pixels=1000"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith("error: folder source: 2 image/mask pair(s) cannot be used") and "37x53 pixels" in line
    assert "data.max_pixels=1000" in line
    assert main(["--config", str(recipe), "--set", "data.max_pixels=0"]) == 2
    assert "data.max_pixels must be >= 1. Received: data.max_pixels=0" in _one_error_line(capsys.readouterr().err)


# ---------------------------------------------------------------------------- 3. bit depth by majority or config


def _mixed_depths(tmp_path) -> Path:
    """One 16-bit PNG sorted first (a.png) among five 8-bit ones."""
    _folder(tmp_path, n=5)
    write(tmp_path / "img" / "a.png", _image(9, dtype=np.uint16))
    write(tmp_path / "msk" / "a.png", _stripes())
    return tmp_path


def test_the_majority_decides_the_bit_depth_and_the_odd_file_is_named(tmp_path, capsys):
    from fcndata.inspect import main

    _mixed_depths(tmp_path)
    recipe = _recipe(tmp_path)
    assert main(["--config", str(recipe)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    odd = tmp_path / "img" / "a.png"
    assert line.startswith(f"error: folder source: image {odd} is uint16, but 5 of the 6 images are uint8 (e.g. "
                           f"{tmp_path / 'img' / '0.png'}, {tmp_path / 'img' / '1.png'})"), line
    assert main(["--config", str(recipe), "--set", "data.on_error=skip"]) == 0
    captured = capsys.readouterr()
    assert "5 images" in captured.out and f"rejected files: 1\n    {odd}: " in captured.out
    assert captured.err.count(str(odd)) == 0  # listed once, in the report (the source itself stays quiet)


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_image_dtype_converts_every_file(tmp_path, dtype):
    _mixed_depths(tmp_path)
    ds = S.from_folder("img/*.png", "msk/{stem}.png", channels=3, num_classes=3, root=str(tmp_path), image_dtype=dtype)
    got = {Path(e["path"].numpy().decode()).name: e["image"].numpy() for e in ds}
    assert len(got) == 6 and all(v.dtype == np.dtype(dtype) for v in got.values())
    sixteen, eight = _image(9, dtype=np.uint16), _image(0)
    if dtype == "uint8":
        np.testing.assert_array_equal(got["a.png"], np.round(sixteen / 257.0).astype(np.uint8))
        np.testing.assert_array_equal(got["0.png"], eight)
    else:
        np.testing.assert_array_equal(got["a.png"], sixteen)
        np.testing.assert_array_equal(got["0.png"], eight.astype(np.uint16) * 257)


def test_headers_give_size_and_dtype_without_decoding(tmp_path):
    write(tmp_path / "a.png", np.zeros((5, 7), np.uint16))
    write(tmp_path / "b.jpg", np.zeros((9, 4, 3), np.uint8))
    write(tmp_path / "c.tif", np.zeros((6, 3), np.float32))
    write(tmp_path / "d.bmp", np.zeros((2, 8, 3), np.uint8))
    write(tmp_path / "e.tif", np.zeros((3, 2, 3), np.uint16))
    (tmp_path / "f.png").write_bytes(b"")
    got = {p.name: decode.read_header(p) for p in sorted(tmp_path.iterdir())}
    assert [(h.format, h.height, h.width, h.dtype) for h in got.values()] == [
        ("png", 5, 7, "uint16"), ("jpeg", 9, 4, "uint8"), ("tiff", 6, 3, "float32"), ("bmp", 2, 8, "uint8"),
        ("tiff", 3, 2, "uint16"), ("empty", None, None, None)]


# ---------------------------------------------------------------------------- 4. braces and brackets in paths


@pytest.mark.parametrize("folder", ["data_{v1}", "data[1]", "{stem}x"])
def test_paths_are_data_not_format_strings(tmp_path, folder):
    from fcndata.inspect import main

    root = _folder(tmp_path / folder, n=2)
    recipe = _recipe(root)
    assert main(["--config", str(recipe)]) == 0
    assert S.mask_path("msk/{stem}.png", "0") == "msk/0.png"


# ---------------------------------------------------------------------------- 5. predict


@pytest.fixture(scope="module")
def run(untrained_run):
    return untrained_run


def test_predict_processes_the_good_inputs_and_lists_the_bad_ones(run, tmp_path, capsys):
    from fcndata.predict import main

    good = [write(tmp_path / "good1.png", _image(1)), write(tmp_path / "good2.png", _image(2))]
    nan = np.ones((H, W), np.float32)
    nan[3, 4] = np.nan
    bad = {
        "nan.tif": (write(tmp_path / "nan.tif", nan), r"has NaN or inf pixels; .* Received: non_finite_pixels=3"),
        "cut.jpg": (str(_truncate(Path(write(tmp_path / "cut.jpg", _image(3))))), r"is truncated"),
        "five.tif": (write_raw_tiff(tmp_path / "five.tif", _image(4)[..., [0, 1, 2, 0, 1]]), r"could not read or decode"),
        "missing.png": (str(tmp_path / "missing.png"), r"not found"),
    }
    inputs = [good[0], *(p for p, _ in bad.values()), good[1]]
    assert main(["--model", str(run / "model.keras"), "--input", *inputs, "--out", str(tmp_path / "out")]) == 2
    captured = capsys.readouterr()
    line = _one_error_line(captured.err)
    assert line.startswith(f"error: predict: 4 of 6 input(s) failed, listed above as 'skipped:' ({bad['nan.tif'][0]}")
    assert f"the other 2 were written to {tmp_path / 'out'}/" in line
    skipped = [ln for ln in captured.err.splitlines() if ln.startswith("skipped: ")]
    assert len(skipped) == 4
    for (path, pattern), ln in zip(bad.values(), skipped, strict=True):
        assert ln.startswith("skipped: predict: ") and path in ln and re.search(pattern, ln), (pattern, ln)
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "good1_label.png", "good1_overlay.png", "good2_label.png", "good2_overlay.png"]


def test_predict_and_training_reject_a_nan_tiff_with_the_same_message(tmp_path):
    nan = np.ones((H, W), np.float32)
    nan[0, 0] = np.inf
    (tmp_path / "img").mkdir()
    (tmp_path / "msk").mkdir()
    path = write(tmp_path / "img" / "x.tif", nan)
    write(tmp_path / "msk" / "x.png", _stripes())
    with pytest.raises(tf.errors.InvalidArgumentError) as trained:
        list(S.from_folder("img/*", "msk/{stem}.png", channels=3, num_classes=3, root=str(tmp_path)))
    with pytest.raises(ValueError) as served:
        decode.read_image(path, 3, where="folder source")
    from fcndata.cli import one_line

    assert one_line(trained.value).replace(", or set data.on_error=skip to skip it", "") == str(served.value)


# ---------------------------------------------------------------------------- 6-8. train: all skipped, skipped.csv, no validation


def test_everything_skipped_trains_nothing_and_saves_nothing(tmp_path, capsys):
    from fcndata.inspect import main as inspect_main
    from fcndata.train import main as train_main

    _folder(tmp_path, n=3)
    for i in range(3):
        _truncate(tmp_path / "img" / f"{i}.png")
    recipe = _recipe(tmp_path, ["  on_error: skip"])
    assert train_main(["--config", str(recipe)]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {recipe}: no usable file in the train split: all 3 were skipped "
                           f"(data.on_error=skip); the first: folder source: image {tmp_path / 'img' / '0.png'} is "
                           "truncated"), line
    assert f"python -m fcndata.inspect --config {recipe}" in line
    assert not (tmp_path / "runs").exists()
    assert inspect_main(["--config", str(recipe)]) == 2
    captured = capsys.readouterr()
    assert _one_error_line(captured.err).startswith(f"error: {recipe}: no usable image in the train split: all 3 "
                                                    "file(s) were skipped (data.on_error=skip), listed above")
    assert "rejected files: 3" in captured.out


def test_a_pad_multiple_the_model_cannot_take_is_refused_before_anything_runs(tmp_path, capsys):
    from fcndata.train import main as train_main

    # 16 fed the U-Net decoder a 6x7 skip for a 6x6 one deep inside the graph (a concat error).
    recipe = str(ROOT / "pipelines" / "shapes.yaml")
    args = ["--config", recipe, "--set", "batching.pad_to_multiple=16",
            "--set", f"train.run_dir={tmp_path}"]
    assert train_main(args) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert line.startswith(f"error: {recipe}: batching.pad_to_multiple must be a multiple of 32 "), line
    assert "for the bundled model: model.variant=unet (model.depth=5) downsamples 32x" in line
    assert line.endswith("Received: batching.pad_to_multiple=16")
    assert not any(tmp_path.iterdir())  # nothing written


def test_skipped_files_are_printed_once_and_saved_and_no_validation_trains_without_it(tmp_path, capsys):
    from fcndata.train import main

    _folder(tmp_path, n=3)
    bad = _truncate(tmp_path / "img" / "1.png")
    recipe = _recipe(tmp_path, ["  on_error: skip"])  # no val_ lines
    assert main(["--config", str(recipe)]) == 0
    captured = capsys.readouterr()
    assert [ln for ln in captured.err.splitlines() if str(bad) in ln] == [
        f"  {bad}: folder source: image {bad} is truncated (the PNG IEND chunk or JPEG end marker is missing); the "
        "download or copy was probably interrupted. Re-export or remove the file, or set data.on_error=skip to skip "
        f"it. Received: path={bad}"]
    assert "training without validation" in captured.err and "trained without validation" in captured.out
    run = tmp_path / "runs" / "r"
    with (run / "skipped.csv").open() as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "reason"] and [r[0] for r in rows[1:]] == [str(bad)]
    summary = json.loads((run / "summary.json").read_text())
    assert summary["skipped"] == 1 and summary["validation"] is None
    assert (run / "model.keras").is_file() and (run / "history.png").is_file()
    assert not (run / "predictions.png").exists()


def test_a_colour_mask_with_jpeg_ringing_is_named_as_such(tmp_path):
    voc = [(0, 0, 0), (128, 0, 0), (0, 128, 0)]
    _folder(tmp_path, n=2)
    ok, jpeg = cv2.imencode(".jpg", np.array(voc, np.uint8)[_stripes()][..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(tmp_path / "msk" / "0.png"), cv2.imdecode(jpeg, cv2.IMREAD_COLOR))
    stray = np.array(voc, np.uint8)[_stripes()]
    stray[2, 3] = (192, 128, 0)  # a class colour missing from the palette: not ringing
    write(tmp_path / "msk" / "1.png", stray)
    it = iter(S.from_folder("img/*.png", "msk/{stem}.png", channels=3, num_classes=3, palette=voc, root=str(tmp_path)))
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask .*0.png has \d+ pixel\(s\) of \d+ distinct colours "
                       r"not in data.palette, nearly all close to a palette colour: this looks like JPEG compression"):
        next(it)
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"mask .*1.png has 1 pixel\(s\) of colour \(192, 128, 0\) "
                       r"that is not in data.palette; add it"):
        next(it)
