"""Every snippet and command of README.md and docs/*.md runs as written, on tiny data where it would train for minutes.

A Python snippet runs with only the substitutions listed in ``TINY`` (a recipe gets tiny
``--set`` overrides, a fit gets ``verbose=0``); a ``python -m fcndata.*`` command runs
in-process with tiny overrides appended and its outputs redirected to a temporary folder.
What cannot run here is listed in ``SKIPPED`` with the reason, and a test per page checks that
every snippet and command of that page is either run or listed. Each snippet lives on one page
and runs once. The README stays short (at most ``README_MAX_LINES`` lines) and every relative
link of every page points to a file (and heading) that exists.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
README_MAX_LINES = 300
#: page (relative to the repository) -> its text: the README, then docs/ in name order
PAGES = {name: (ROOT / name).read_text()
         for name in ["README.md", *sorted(f"docs/{p.name}" for p in (ROOT / "docs").glob("*.md"))]}
README = PAGES["README.md"]
#: (page, code) of every python block, in page order
PYTHON_BLOCKS = [(page, code) for page, text in PAGES.items() for code in re.findall(r"```python\n(.*?)```", text, re.S)]

BRAIN = ["data.slice_step=24", "model.width=4", "train.epochs=1", "train.steps_per_epoch=1",
         "train.validation_steps=1", "batching.batch_size=2", "train.verbose=0"]
SHAPES = ["data.num_images=4", "data.val_num_images=2", "data.min_size=40", "data.max_size=48", "model.width=4",
          "train.epochs=1", "train.steps_per_epoch=1", "batching.batch_size=4", "train.verbose=0",
          "batching.pad_to_multiple=32"]  # shapes.yaml pads to 96, its largest size: tiny images need 32


def _tiny(recipe: str) -> list[str]:
    return BRAIN if "brain" in recipe else SHAPES


def _block(start: str) -> tuple[str, str]:
    """(page, code) of the one python block, of all pages, that starts with ``start``."""
    found = [(page, code) for page, code in PYTHON_BLOCKS if code.startswith(start)]
    assert len(found) == 1, f"not exactly one python block of README.md and docs/ starts with {start!r}: {found}"
    return found[0]


def _load_config_tiny(code: str) -> str:
    """``load_config("pipelines/x.yaml"[, [...]])`` gets tiny overrides appended."""

    def tiny(m):
        recipe, given = m.group(1), m.group(2)
        items = (given[1:-1] + ", " if given else "") + ", ".join(repr(o) for o in _tiny(recipe))
        return f'load_config("{recipe}", [{items}])'

    return re.sub(r'load_config\("(pipelines/[^"]+)"(?:, (\[[^\]]*\]))?\)', tiny, code)


def _run(code: str, page: str) -> None:
    exec(compile(code, page, "exec"), {"__name__": "readme"})


# ---------------------------------------------------------------------------- python snippets

#: start of a python block -> extra substitutions (old, new) besides tiny recipes
TINY = {
    "import fcndata as fd\n\ncfg = fd.load_config(": [
        ("validation_data=val)", "validation_data=val, verbose=0)")],
    "import cv2\nfrom fcndata.infer import SlidingWindowPredictor": [],
    "import albumentations as A": [],
    "import fcndata.testing as t\nfrom fcndata import patches as P": [],
    "from fcndata import batching, testing": [],
    "import keras\nloss =": [],
    "from fcndata import sampling, testing": [],
    "from fcndata import models, losses, metrics": [('masked=True)', 'masked=True, width=4)'),
                                                   ("epochs=cfg.train.epochs)", "epochs=cfg.train.epochs, verbose=0)")],
    "from fcndata.config import load_config\nfrom fcndata.pipeline import build_pipeline\nfrom fcndata import preview": [
        ("epochs=2)", "epochs=2, verbose=0)"), ("model.predict(inputs)", "model.predict(inputs, verbose=0)")],
}
SKIPPED = {
    "from fcndata import sources\nfrom fcndata.config import load_config":
        "needs your own my_data.yaml with image files and a prepared TFDS dataset; the same calls run in "
        "tests/test_sources.py",
    "import keras\nimport tensorflow as tf\nimport fcndata.testing as t\nfrom fcndata.augment import Augment":
        "runs as written in test_readme_hand_composition_example_runs, which also checks what its text promises",
    "from fcndata.distributed import distribute_dataset":
        "needs a running dispatcher at HOST:5050; tests/test_distributed.py runs distribute_dataset against "
        "dispatcher and worker processes on loopback",
}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_python_block_is_run_or_listed_as_skipped(page):
    for block in [code for where, code in PYTHON_BLOCKS if where == page]:
        assert any(block.startswith(k) for k in [*TINY, *SKIPPED]), f"{page}: python block not tested:\n{block[:200]}"


def test_every_tiny_and_skipped_block_is_on_exactly_one_page():
    for start in [*TINY, *SKIPPED]:
        _block(start)


def _saved_run(where: Path) -> Path:
    """runs/NAME/model.keras + config.yaml of a tiny shapes model, as the README's paths name them."""
    from fcndata.config import dump_config, load_config
    from fcndata.models import model_from_config

    run = where / "runs" / "NAME"
    run.mkdir(parents=True)
    cfg = load_config(ROOT / "pipelines" / "shapes.yaml", ["model.width=4"])
    model_from_config(cfg.model, cfg.data).save(run / "model.keras")
    dump_config(cfg, run / "config.yaml")
    return run


@pytest.mark.parametrize("start", list(TINY), ids=[f"{_block(k)[0]}:{k.splitlines()[0][:40]}" for k in TINY])
def test_readme_python_block_runs(start, tmp_path, monkeypatch):
    page, code = _block(start)
    code = _load_config_tiny(code)
    for old, new in TINY[start]:
        assert old in code, old
        code = code.replace(old, new)
    # relative recipe paths as in the README (run from the repository), outputs in tmp_path
    code = code.replace('"pipelines/', f'"{ROOT}/pipelines/')
    if "runs/NAME/model.keras" in code:
        _saved_run(tmp_path)
        cv2.imwrite(str(tmp_path / "big.png"), np.random.default_rng(0).integers(0, 255, (150, 170, 3), np.uint8))
    monkeypatch.chdir(tmp_path)
    _run(code, page)


def test_readme_quickstart_is_the_brain_recipe():
    assert PYTHON_BLOCKS[0][0] == "README.md"
    assert 'load_config("pipelines/brain_patchwise.yaml", ["train.epochs=2"])' in PYTHON_BLOCKS[0][1]


# ---------------------------------------------------------------------------- commands


def _commands(text: str) -> list[str]:
    """Every ``python -m fcndata.*`` / ``make`` / ``python benchmarks`` line of a page's shell blocks."""
    out = []
    for lang, block in re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M):
        if lang not in ("", "bash"):
            continue
        text = block.replace("\\\n", " ")
        for line in text.splitlines():
            line = line.split("  #")[0].strip().removeprefix("$ ")
            if line.startswith(("python ", "make ")):
                out.append(" ".join(line.split()))
    return out


PAGE_COMMANDS = {page: _commands(text) for page, text in PAGES.items()}
COMMANDS = [c for commands in PAGE_COMMANDS.values() for c in commands]
SKIPPED_COMMANDS = {
    "make train": "trains the default recipe for minutes; the same code runs in the train commands below",
    "make test": "is this test suite",
    "make preview": "is the first preview command, run below",
    "make bench": "runs every benchmark for about 15 minutes (benchmarks/ is not part of the suite); "
                  "tests/test_experiments.py::test_run_all_renders_every_benchmark_table_with_memory_and_machine "
                  "checks the RESULTS.md it writes",
    "make experiment": "trains 7 settings x 3 seeds for about 30 minutes: the patchwise command below",
    "python -m fcndata.experiments.": "trains every setting for minutes; tests/test_experiments.py::"
                                      "test_patchwise_on_shapes_writes_table_plot_and_paragraph_from_the_runs runs "
                                      "the same driver on tiny shapes",
    "python benchmarks/": "benchmarks train or measure for minutes (make bench runs them); benchmarks/ is not "
                          "part of the test suite",
    "python -m fcndata.distributed": "starts long-running tf.data service servers; tests/test_distributed.py starts "
                                     "dispatchers and workers with these commands as subprocesses",
    "python -m fcndata.plan --config my_data.yaml": "needs your own folder; tests/test_plan.py::"
        "test_plan_then_train_a_folder_end_to_end runs plan, then train on the data-only recipe, on a folder it writes",
    "python -m fcndata.train --config my_data.yaml --minutes": "needs your own folder; tests/test_plan.py::"
        "test_plan_then_train_a_folder_end_to_end trains a data-only recipe's plan the same way",
    "python -m fcndata.train --config my_data.yaml --set service.address=": "needs a dispatcher; "
        "test_distributed.py::test_readme_train_command_with_a_service runs it against two worker processes",
    "python -m fcndata.train --config pipelines/shapes.yaml --set train.strategy=": "test_distributed.py::"
        "test_train_command_on_two_hosts_ends_with_identical_weights runs the mirrored command in-process and the "
        "multi_worker one in two processes with TF_CONFIG on loopback",
}


def _skipped(command: str) -> bool:
    return any(command.startswith(s) for s in SKIPPED_COMMANDS)


@pytest.mark.parametrize("page", list(PAGES))
def test_every_command_is_run_or_listed_as_skipped(page):
    run = [c for c in PAGE_COMMANDS[page] if not _skipped(c)]
    assert {c.split()[2] for c in run} <= {"fcndata.train", "fcndata.predict", "fcndata.inspect", "fcndata.preview"}, \
        f"{page}: commands neither run below nor listed in SKIPPED_COMMANDS: {run}"


def test_the_commands_run_below_are_all_the_commands_not_skipped():
    run = [c for c in COMMANDS if not _skipped(c)]
    assert len(run) == 9, run  # 1 config error, 3 train, 2 predict, 1 inspect, 2 preview (run below)
    for skipped in SKIPPED_COMMANDS:
        assert any(c.startswith(skipped) for c in COMMANDS), f"SKIPPED_COMMANDS lists a command no page has: {skipped}"


def _argv(command: str, tmp_path: Path) -> list[str]:
    argv = shlex.split(command)[3:]
    # an optional part in brackets is run too: "[--split validation]" -> "--split validation"
    argv = [a.strip("[]") for a in argv]
    return argv


def test_readme_config_error_example_prints_what_the_readme_shows():
    command = "$ python -m fcndata.train --set patches.stide=16"
    (text,) = [text for text in PAGES.values() if command in text]
    block = text[text.index(command):]
    expected = block.splitlines()[1]
    out = subprocess.run([sys.executable, "-m", "fcndata.train", "--set", "patches.stide=16"], cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2
    assert out.stderr.strip() == expected


def test_readme_train_predict_inspect_commands_run(tmp_path, monkeypatch, capsys):
    from fcndata.inspect import main as inspect_main
    from fcndata.predict import main as predict_main
    from fcndata.train import main as train_main

    monkeypatch.chdir(ROOT)
    train = [c for c in COMMANDS if c.startswith("python -m fcndata.train --") and "stide" not in c and not _skipped(c)]
    assert [c.split()[3] for c in train] == ["--config", "--config", "--resume"]
    runs = tmp_path / "runs"
    first_run = None
    for command in train:
        argv = _argv(command, tmp_path)
        if argv[0] == "--resume":
            # the README's run folder is an example name; make the first run one of 2 epochs
            # that stopped after its first, as a crash or Ctrl-C would leave it
            from fcndata.config import dump_config, load_config

            cfg = load_config(first_run / "config.yaml", ["train.epochs=2"])
            dump_config(cfg, first_run / "config.yaml")
            argv = ["--resume", str(first_run)]
        else:
            name = Path(argv[1]).stem
            argv += sum((["--set", s] for s in _tiny(argv[1]) + [f"train.run_dir={runs}", f"train.name={name}"]), [])
            first_run = first_run or runs / name
        assert train_main(argv) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip().splitlines()[-1].startswith("fcndata: results in")

    for name in ("a.png", "big.png"):
        cv2.imwrite(str(tmp_path / name), np.random.default_rng(0).integers(0, 255, (70, 90, 3), np.uint8))
    cv2.imwrite(str(tmp_path / "b.tif"), np.random.default_rng(1).integers(0, 255, (40, 50), np.uint8))
    for command in [c for c in COMMANDS if c.startswith("python -m fcndata.predict")]:
        argv = _argv(command, tmp_path)
        argv = [str(first_run / "model.keras") if a == "runs/NAME/model.keras" else
                str(tmp_path / a) if a in ("a.png", "b.tif", "big.png") else
                str(tmp_path / "preds") if a == "preds/" else a for a in argv]
        assert predict_main(argv) == 0, capsys.readouterr().err
    assert {p.name for p in (tmp_path / "preds").iterdir()} >= {"a_label.png", "b_overlay.png", "big_label.png"}

    inspect = [c for c in COMMANDS if c.startswith("python -m fcndata.inspect")]
    assert len(inspect) == 1
    assert inspect_main(_argv(inspect[0], tmp_path)) == 0
    assert "[brain, validation]" in capsys.readouterr().out


def test_readme_preview_commands_run(tmp_path, monkeypatch, capsys):
    from fcndata.preview import main

    monkeypatch.chdir(ROOT)
    commands = [c for c in COMMANDS if c.startswith("python -m fcndata.preview")]
    assert len(commands) == 2
    for command in commands:
        argv = _argv(command, tmp_path)
        out = argv.index("--out") + 1
        argv[out] = str(tmp_path / argv[out])
        recipe = argv[argv.index("--config") + 1]
        argv += sum((["--set", s] for s in _tiny(recipe)), [])
        assert main(argv) == 0, capsys.readouterr().err
        assert capsys.readouterr().out.strip() == argv[out]


def test_readme_hand_composition_example_runs():
    section = README[README.index("## Composing stages by hand"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "model.fit(ds, epochs=2" in code and "Augment(" in code and "RandomPatches(" in code
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    # the text's promise: two iterations (two Keras epochs) differ, and a rebuild replays them
    ds = scope["ds"]
    first, second = [b[2].numpy() for b in ds], [b[2].numpy() for b in ds]
    assert any(not (a.shape == b.shape and (a == b).all()) for a, b in zip(first, second))


# ---------------------------------------------------------------------------- the pages themselves


def test_readme_is_short():
    lines = len(README.splitlines())
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; at most {README_MAX_LINES}: move reference to docs/"


def _anchor(heading: str) -> str:
    """GitHub's anchor of a Markdown heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = re.sub(r"^```.*?^```", "", path.read_text(), flags=re.S | re.M)
    return {_anchor(h) for h in re.findall(r"^#+ (.*)$", text, re.M)}


@pytest.mark.parametrize("page", list(PAGES))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    text = re.sub(r"^```.*?^```", "", PAGES[page], flags=re.S | re.M)
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", text):
        if re.match(r"[a-z]+:", target):
            continue  # http(s), mailto
        path, _, anchor = target.partition("#")
        file = ((ROOT / page).parent / path).resolve() if path else ROOT / page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT) if file.is_relative_to(ROOT) else file}")
        elif anchor and file.suffix == ".md" and anchor not in _anchors(file):
            broken.append(f"{target}: no heading with anchor #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page}: broken links:\n" + "\n".join(broken)
