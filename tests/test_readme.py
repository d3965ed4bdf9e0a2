"""The README's opening Python example runs (on the tiny shapes recipe instead of brain)."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_readme_quickstart_runs(monkeypatch):
    text = (ROOT / "README.md").read_text()
    code = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    assert 'load_config("pipelines/brain_patchwise.yaml", ["train.epochs=2"])' in code
    tiny = ('load_config("pipelines/shapes_patchwise.yaml", ["train.epochs=2", "train.steps_per_epoch=2", '
            '"data.num_images=4", "data.val_num_images=2", "model.width=4", "batching.batch_size=8"])')
    code = code.replace('load_config("pipelines/brain_patchwise.yaml", ["train.epochs=2"])', tiny)
    code = code.replace("validation_data=val)", "validation_data=val, verbose=0)")
    monkeypatch.chdir(ROOT)
    exec(compile(code, "README.md", "exec"), {})


def test_readme_hand_composition_example_runs():
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Composing stages by hand"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    assert "model.fit(ds, epochs=2" in code and "Augment(" in code and "RandomPatches(" in code
    scope = {}
    exec(compile(code, "README.md", "exec"), scope)
    # the text's promise: two iterations (two Keras epochs) differ, and a rebuild replays them
    ds = scope["ds"]
    first, second = [b[2].numpy() for b in ds], [b[2].numpy() for b in ds]
    assert any(not (a.shape == b.shape and (a == b).all()) for a, b in zip(first, second))
