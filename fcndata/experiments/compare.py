"""Train several settings for the same wall-clock budget and compare them on validation IoU.

A *setting* is a recipe (a YAML in ``pipelines/``, or the base recipe) plus ``--set``-style
overrides, a ready :class:`~fcndata.config.Config` (a plan of :mod:`fcndata.plan`, trained as
it is), or the plain U-Net of :mod:`fcndata.experiments.baseline`. Every recipe setting of a
comparison shares the base recipe's ``data``, ``augment`` and ``model`` sections (unless a
setting's own overrides name them), so the same network sees the same images and only the
training scheme differs. :func:`compare` trains seeds × settings round-robin (seed 0 of every
setting, then seed 1, ...), so a change in the machine's load hits every setting alike.

Each run trains for ``seconds`` of *training* wall-clock: the time of the training steps,
input pipeline included. Graph tracing is not training: the first step, and a step on a new
batch shape that took over :data:`RETRACE_FACTOR` times the median step (a retrace; whole
images of several sizes cause one or two), are reported apart as ``compile_s``; they still
count as iterations. It evaluates the validation split (whole images, mean and
per-class IoU over the labeled pixels, :func:`fcndata.evaluation.evaluate`) at ``eval_points``
evenly spaced points of that budget; evaluation time is excluded and reported as ``eval_s``.
The recipe's ``train.schedule`` runs over the budget's seconds, not over epochs: cosine and
poly decay reach 0 exactly when the budget ends, whatever each setting's speed (a schedule
over iterations would favour whichever setting's step-count estimate was right).
``train.warmup_steps`` still counts steps.

:mod:`fcndata.experiments.report` writes ``RESULTS.md``, ``curves.png`` and
``results.json``; the presets (:mod:`~fcndata.experiments.patchwise`,
:mod:`~fcndata.experiments.balance`) choose the settings and the paragraph saying what the
numbers mean.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shlex
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

#: what a setting may be trained by
TRAINERS = ("fcndata", "unet")
#: sections every setting takes from the base recipe: the same data, augmentation and network
SHARED_SECTIONS = ("data", "augment", "model")
#: a step on a batch shape not seen before that takes this many times the median step traced the
#: graph again (whole images of several sizes do, once or twice; Keras then relaxes the shapes)
RETRACE_FACTOR = 3.0
#: epochs of the training stream: far more than a budget reaches (the stream is built once)
_STREAM_EPOCHS = 100_000


@dataclass(frozen=True)
class Setting:
    """One arm of a comparison.

    Attributes:
      name: short name, used in the table, the plot legend and ``--only``.
      recipe: a YAML recipe (relative paths resolve against the working directory, then
        the repository); None is the base recipe.
      overrides: ``section.key=value`` strings applied to that recipe.
      trainer: ``fcndata`` (the recipe's model, loss and optimizer) or ``unet`` (the plain
        Keras U-Net of :mod:`fcndata.experiments.baseline` on the base recipe's data).
      about: one line saying what the setting is, for the table.
      config: a ready :class:`~fcndata.config.Config` trained as it is, instead of ``recipe``
        and ``overrides``: neither the base recipe's shared sections nor the command line's
        overrides are applied to it (a plan of :func:`fcndata.plan.plan` keeps its own model).
    """

    name: str
    recipe: str | None = None
    overrides: tuple[str, ...] = ()
    trainer: str = "fcndata"
    about: str = ""
    config: Any = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if self.trainer not in TRAINERS:
            raise ValueError(f"Setting {self.name!r}: trainer must be one of {list(TRAINERS)}. "
                             f"Received: trainer={self.trainer!r}")
        object.__setattr__(self, "overrides", tuple(self.overrides))
        if self.config is not None and (self.recipe is not None or self.overrides or self.trainer != "fcndata"):
            raise ValueError(f"Setting {self.name!r}: a ready config is trained by fcndata as it is; give either "
                             "config or recipe/overrides, not both. Received: "
                             f"recipe={self.recipe!r}, overrides={list(self.overrides)}, trainer={self.trainer!r}")


def _find_recipe(recipe: str) -> Path:
    """A recipe path as given, or relative to the repository (``python -m`` from anywhere)."""
    path = Path(recipe)
    if not path.is_file() and not path.is_absolute():
        packaged = Path(__file__).resolve().parent.parent.parent / recipe
        if packaged.is_file():
            return packaged
    return path


def resolve(setting: Setting, base_recipe: str, overrides: Sequence[str] = ()):
    """The :class:`~fcndata.config.Config` a setting trains.

    ``overrides`` (the command line's ``--set``) apply to the base and to every setting,
    after the setting's own. The result takes :data:`SHARED_SECTIONS` from the base,
    except a section the setting's own overrides name. A setting with a ready ``config`` is that config.
    """
    from fcndata.config import load_config

    if setting.config is not None:
        return setting.config
    base = load_config(_find_recipe(base_recipe), list(overrides))
    if setting.trainer == "unet":
        return base
    recipe = _find_recipe(setting.recipe or base_recipe)
    config = load_config(recipe, [*setting.overrides, *overrides])
    own = {o.split(".", 1)[0] for o in setting.overrides}
    shared = {s: getattr(base, s) for s in SHARED_SECTIONS if s not in own}
    return config.replace(**shared)


#: values a comparison does not use (the budget replaces the epochs; nothing is saved or predicted)
UNUSED = ("train.epochs", "train.seconds", "train.steps_per_epoch", "train.validation_steps", "train.run_dir", "train.name",
          "train.verbose", "predict.")


def differences(config, base) -> list[str]:
    """``section.key=value`` for every value of ``config`` that differs from ``base``.

    A section only ``config`` has lists its first key (and ``patch_size``) and every value
    that differs from its default; a section only ``base`` has reads ``section: none``. Values the
    comparison does not use (:data:`UNUSED`) are left out.
    """
    from fcndata.config import to_dict

    a, b = to_dict(config), to_dict(base)
    out = []
    for section in sorted(a.keys() | b.keys()):
        x, y = a.get(section), b.get(section)
        if x is None:
            out.append(f"{section}: none")
        elif x != y:
            ref = y if y is not None else _defaults(section)
            out += [f"{section}.{k}={v}" for i, (k, v) in enumerate(x.items())
                    if v != ref.get(k) or (y is None and (i == 0 or k == "patch_size"))]
    return [d for d in out if not d.startswith(UNUSED)]


def _defaults(section: str) -> dict:
    import typing

    from fcndata import config as C

    cls = typing.get_type_hints(C.Config)[section]
    cls = next((a for a in typing.get_args(cls) if a is not type(None)), cls)
    return {f.name: list(f.default) if isinstance(f.default, tuple) else f.default
            for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


# ---------------------------------------------------------------------------- one run


def lr_at(config, fraction: float, step: int) -> float:
    """The learning rate after ``fraction`` of the budget's seconds and ``step`` steps.

    >>> from fcndata.config import load_config_text
    >>> cfg = load_config_text("train: {learning_rate: 0.01, schedule: cosine}")
    >>> lr_at(cfg, 0.0, 10), round(lr_at(cfg, 0.5, 10), 6), lr_at(cfg, 1.0, 10)
    (0.01, 0.005, 0.0)
    """
    from fcndata.schedules import budget_rate

    t = config.train
    return budget_rate(t.learning_rate, t.schedule, t.warmup_steps, fraction, step)


def _fcndata_model(config):
    """The recipe's model, loss and optimizer at a constant rate (the driver sets it per step).

    Compiled without metrics: the IoU comes from :func:`fcndata.evaluation.evaluate`, and metrics
    in the training step would cost every setting time the U-Net does not pay.
    """
    from fcndata import losses, models
    from fcndata.train import make_optimizer

    # (epochs: a plan leaves them null, the budget decides; the constant rate never reads them)
    constant = config.replace(train=dataclasses.replace(config.train, schedule="constant", warmup_steps=0,
                                                        epochs=config.train.epochs or 1))
    model = models.model_from_config(config.model, config.data)
    model.compile(
        optimizer=make_optimizer(constant, 1),
        loss=losses.loss_from_config(config.loss, config.data.num_classes, config.data.ignore_label),
        jit_compile=config.train.jit_compile,
    )
    return model


def train_for(
    config,
    seconds: float,
    seed: int,
    *,
    trainer: str = "fcndata",
    eval_points: int = 6,
    max_steps: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict:
    """Trains one setting for ``seconds`` of training wall-clock; evaluates along the way.

    Args:
      config: the setting's resolved recipe (:func:`resolve`).
      seconds: the training budget (steps after the first, input pipeline included).
      seed: ``train.seed`` of this run: weight initialisation and the random stages keyed
        on it; the data order follows ``data.seed``, the same in every run.
      trainer: ``fcndata`` or ``unet``.
      eval_points: evaluations at ``k / eval_points`` of the budget, k = 1..eval_points
        (with ``max_steps``, also at ``k / eval_points`` of the steps, whichever comes first).
      max_steps: stop earlier, after this many steps (smoke runs and tests).
      log: called with one line per evaluation.

    Returns:
      A dict: ``seconds`` (training), ``steps``, ``compile_s``, ``eval_s``, ``s_per_step``
      (median), ``curve`` (one entry per evaluation: seconds, steps, mean_iou,
      per_class_iou), and the last evaluation's ``mean_iou`` and ``per_class_iou``.
    """
    import keras

    from fcndata.evaluation import evaluate
    from fcndata.pipeline import build_pipeline

    if trainer not in TRAINERS:
        raise ValueError(f"train_for: trainer must be one of {list(TRAINERS)}. Received: trainer={trainer!r}")
    if seconds <= 0 or eval_points < 1:
        raise ValueError(f"train_for: seconds must be > 0 and eval_points >= 1. "
                         f"Received: seconds={seconds}, eval_points={eval_points}")
    keras.backend.clear_session()
    keras.utils.set_random_seed(seed)
    config = config.replace(train=dataclasses.replace(config.train, seed=seed))
    if trainer == "unet":
        from fcndata.experiments import baseline

        # Scored on fcndata's validation pipeline (the same pixels, the same [0, 1] scaling).
        config = config.replace(model=dataclasses.replace(config.model, masked=False))
        x, y, _ = baseline.load_arrays(config, "train")
        model = baseline.compiled_unet(config.data.num_classes, x.shape[-1])
        arrays = baseline.array_batches(x, y, config.batching.batch_size, seed)

        def step() -> tuple:
            x, y = next(arrays)
            model.train_on_batch(x, y)
            return x.shape

        def set_lr(fraction, steps):  # the user's U-Net: Adam at a constant 1e-3
            return None
    else:
        model = _fcndata_model(config)
        batches = iter(build_pipeline(config, "train", epochs=_STREAM_EPOCHS, fixed_length=False))

        def step() -> tuple:
            inputs, label, weight = next(batches)
            model.train_on_batch(inputs, label, sample_weight=weight)
            return tuple(label.shape)

        current = [None]

        def set_lr(fraction, steps):
            lr = lr_at(config, fraction, steps)
            if current[0] is None or abs(lr - current[0]) > 1e-3 * config.train.learning_rate:
                model.optimizer.learning_rate = lr
                current[0] = lr

    val = build_pipeline(config, "eval")  # built once per run: whole validation images
    set_lr(0.0, 0)
    start = time.perf_counter()
    shapes = {step()}  # traces the training graph and starts the input pipeline: reported apart, not in the budget
    compile_s = time.perf_counter() - start
    steps, trained, eval_s, times, curve = 1, 0.0, 0.0, [], []
    every = seconds / eval_points
    next_eval = every
    # With max_steps, evaluations also fall at k / eval_points of the steps (whichever comes first).
    every_steps = max_steps / eval_points if max_steps else math.inf
    next_eval_step = every_steps
    while True:
        set_lr(trained / seconds, steps)
        t0 = time.perf_counter()
        shape = step()
        dt = time.perf_counter() - t0
        steps += 1
        # (A new shape before any timed step is taken for a retrace too: at worst one step is not counted.)
        if shape not in shapes and (not times or dt > RETRACE_FACTOR * float(np.median(times))):
            compile_s += dt  # a new batch shape traced the graph again: compile time, not training
        else:
            trained += dt
            times.append(dt)
        shapes.add(shape)
        done = trained >= seconds or (max_steps is not None and steps >= max_steps)
        if trained >= next_eval or steps >= next_eval_step or done:
            t0 = time.perf_counter()
            result = evaluate(model, config, dataset=val)
            eval_s += time.perf_counter() - t0
            curve.append({"seconds": round(trained, 2), "steps": steps, "mean_iou": result["mean_iou"],
                          "per_class_iou": result["per_class_iou"]})
            if log is not None:
                log(f"  {trained:6.1f} s, {steps:5d} steps: validation mean IoU {result['mean_iou']:.3f}")
            while next_eval <= trained:
                next_eval += every
            while next_eval_step <= steps:
                next_eval_step += every_steps
        if done:
            break
    return {
        "seed": seed,
        "seconds": round(trained, 2),
        "steps": steps,
        "compile_s": round(compile_s, 2),
        "eval_s": round(eval_s, 2),
        "s_per_step": float(np.median(times)),
        "mean_iou": curve[-1]["mean_iou"],
        "per_class_iou": curve[-1]["per_class_iou"],
        "curve": curve,
    }


# ---------------------------------------------------------------------------- the comparison


def compare(
    base_recipe: str,
    settings: Sequence[Setting],
    *,
    seconds: float,
    seeds: Sequence[int],
    eval_points: int = 6,
    overrides: Sequence[str] = (),
    max_steps: int | None = None,
    out_dir: str | Path | None = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Trains every setting for every seed, round-robin, and collects the runs.

    Args:
      base_recipe: the recipe every setting shares ``data`` and ``model`` with.
      settings: the arms (names must differ).
      seconds, eval_points, max_steps: see :func:`train_for`.
      seeds: ``train.seed`` values; each setting runs once per seed.
      overrides: ``--set`` strings applied to the base and every setting.
      out_dir: if given, ``results.json`` there is rewritten after every run (a stopped
        comparison keeps what it measured).
      log: progress lines.

    Returns:
      ``{"base": ..., "settings": [{name, about, trainer, recipe, differences}], "runs":
      [{setting, seed, ...train_for's dict}], "seconds", "seeds", "eval_points",
      "class_fraction": training pixels per class / all labeled pixels, "class_names"}``.

    Raises:
      ValueError: two settings share a name, or there is none.
    """
    from fcndata.experiments.report import machine_facts
    from fcndata.pipeline import training_class_counts

    names = [s.name for s in settings]
    if not names or len(set(names)) != len(names):
        raise ValueError(f"compare: settings need distinct names, at least one. Received: {names}")
    from fcndata.config import load_config

    base = load_config(_find_recipe(base_recipe), list(overrides))
    configs = {s.name: resolve(s, base_recipe, overrides) for s in settings}
    counts = np.asarray(training_class_counts(base)).reshape(-1, base.data.num_classes).sum(0)
    results = {
        "base": base_recipe,
        "overrides": list(overrides),
        "seconds": seconds,
        "seeds": list(seeds),
        "eval_points": eval_points,
        "max_steps": max_steps,
        "class_names": list(base.data.names),
        "class_fraction": (counts / max(counts.sum(), 1)).tolist(),
        "settings": [
            {"name": s.name, "about": s.about, "trainer": s.trainer,
             "recipe": "(a ready config)" if s.config is not None else s.recipe or base_recipe,
             "overrides": list(s.overrides),
             "differences": ["plain Keras U-Net (fcndata.experiments.baseline), Adam 1e-3, fed from numpy arrays"]
             if s.trainer == "unet" else differences(configs[s.name], base)}
            for s in settings
        ],
        "machine_start": machine_facts(),
        "runs": [],
    }
    total = len(seeds) * len(settings)
    for i, seed in enumerate(seeds):
        for j, s in enumerate(settings):
            k = i * len(settings) + j + 1
            log(f"[{k}/{total}] {s.name}, seed {seed}: {seconds:g} s of training")
            run = train_for(configs[s.name], seconds, seed, trainer=s.trainer, eval_points=eval_points,
                            max_steps=max_steps, log=log)
            log(f"[{k}/{total}] {s.name}, seed {seed}: mean IoU {run['mean_iou']:.3f} after {run['steps']} steps "
                f"({run['s_per_step']:.3f} s/step; compile {run['compile_s']:.1f} s, evaluation {run['eval_s']:.1f} s)")
            results["runs"].append({"setting": s.name, **run})
            if out_dir is not None:
                Path(out_dir).mkdir(parents=True, exist_ok=True)
                (Path(out_dir) / "results.json").write_text(json.dumps(results, indent=1))
    results["machine_end"] = machine_facts()
    return results


# ---------------------------------------------------------------------------- command line


def main(
    argv: Sequence[str] | None,
    *,
    prog: str,
    description: str,
    settings: Sequence[Setting],
    default_config: str,
    default_out: str,
    default_seconds: float,
    default_seeds: Sequence[int],
    paragraph: Callable[[dict, dict], str],
    title: str,
) -> int:
    """The command line every preset shares: train, then write RESULTS.md, curves.png, results.json."""
    from fcndata import cli

    names = [s.name for s in settings]
    parser = cli.command_parser(prog, description, recipe=False, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=default_config,
                        help=f"base recipe: every setting trains its data, augment and model sections (default {default_config})")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one config value in the base and every setting, repeatable")
    parser.add_argument("--seconds", type=float, default=default_seconds,
                        help=f"training wall-clock per run, evaluation excluded (default {default_seconds:g})")
    parser.add_argument("--seeds", type=int, nargs="+", default=list(default_seeds),
                        help=f"train.seed values, each setting once per seed (default {' '.join(map(str, default_seeds))})")
    parser.add_argument("--eval-points", type=int, default=6, help="evaluations per run, evenly spaced (default 6)")
    parser.add_argument("--only", nargs="+", choices=names, metavar="NAME", help=f"a subset of {names}")
    parser.add_argument("--max-steps", type=int, help="stop a run after this many steps too (smoke runs)")
    parser.add_argument("--out", default=default_out, help=f"output folder (default {default_out})")
    args = parser.parse_args(argv)
    chosen = [s for s in settings if args.only is None or s.name in args.only]
    command = shlex.join([sys.executable.rsplit("/", 1)[-1], "-m", prog.split()[-1],
                          *(sys.argv[1:] if argv is None else argv)])

    def body() -> int:
        from fcndata.experiments import report

        out = Path(args.out)
        results = compare(args.config, chosen, seconds=args.seconds, seeds=args.seeds, eval_points=args.eval_points,
                          overrides=args.overrides, max_steps=args.max_steps, out_dir=out)
        results["command"] = command
        written = report.write(results, out, title=title, paragraph=paragraph)
        print(f"{prog}: results in {', '.join(str(p) for p in written)}")
        return 0

    return cli.run(body, debug=args.debug)
