"""``python -m fcndata.experiments.panel``: the planned recipe against a plain U-Net on unlike datasets.

A planner is judged on a panel, never on one dataset (issue 24): for each dataset below,
:func:`fcndata.plan.plan` plans a complete recipe from the dataset's ``data:`` section alone
(the bundled recipe's other sections are dropped, so the plan decides), and the planned
recipe and the plain Keras U-Net of :mod:`fcndata.experiments.baseline` (batch 4 of whole,
zero-padded images scaled to [0, 1], Adam 1e-3) train for the same wall-clock, seed by seed,
round-robin (:func:`fcndata.experiments.compare.compare`: budgets count training steps only;
graph tracing and evaluations are reported apart).

=========  ==================================  =====================================================
dataset    data section of                     what a planner must adapt to
=========  ==================================  =====================================================
brain      ``pipelines/brain_fullimage.yaml``  small 1-channel MRI slices of 3 shapes, thin CSF
digits     ``pipelines/digits_fullimage.yaml`` 11 classes, each digit 0.3-0.5 % of the pixels
shapes     ``pipelines/shapes.yaml``           few small RGB canvases, a 4x class imbalance
scenes     ``pipelines/scenes.yaml``           RGB 512-640 px: whole images exceed a batch budget
phantom    ``pipelines/phantom.yaml``          16-bit CT values (HU + 1024), 12 classes, 4 under 0.5 %
=========  ==================================  =====================================================

Writes ``experiments/panel/RESULTS.md`` (per dataset: mean IoU over seeds for the plan and the
U-Net, per-class IoU, seconds per step, epochs reached, the verdict and a flag for runs that
predict one class only, and the plan's decisions with their reasons), ``curves.png`` and
``results.json``; per dataset, ``<dataset>/`` holds the comparison's own RESULTS.md, and
``recipes/`` and ``plans/`` the data-only recipe and the plan that were trained::

    python -m fcndata.experiments.panel                                # ~45 minutes on 2 cores
    python -m fcndata.experiments.panel --datasets scenes,phantom --seconds 180 --seeds 2
    python -m fcndata.experiments.panel --datasets shapes --seconds 10 --seeds 1 --set data.num_images=8

``--seconds S`` scales the table :data:`SECONDS`: the longest budget becomes ``S`` and the
others keep their proportion. ``--set`` applies to every dataset: ``data.*`` values before
planning (the plan sees that data), other sections to the planned recipe and to the U-Net's
base recipe (its ``batching.batch_size``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shlex
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

#: dataset -> the bundled recipe whose data section the panel trains
RECIPES = {
    "brain": "pipelines/brain_fullimage.yaml",
    "digits": "pipelines/digits_fullimage.yaml",
    "shapes": "pipelines/shapes.yaml",
    "scenes": "pipelines/scenes.yaml",
    "phantom": "pipelines/phantom.yaml",
}
#: training seconds per run (each of 2 trainers x 3 seeds): 330 s x 6 = 33 minutes of training.
#: Measured per run on 2 cores (6-step smoke runs, 2026-12-04): graph tracing 2-10 s, one evaluation
#: 0.4-2.6 s (brain, digits, shapes), 5 / 2.7 s (phantom: plan / U-Net), 21 / 10 s (scenes: 12
#: whole 512-640 px images); with :data:`EVAL_POINTS` evaluations a run the panel takes ~44 minutes.
#: scenes and phantom get the most: their steps are the slowest (scenes' U-Net: 3.7 s a step).
SECONDS = {"brain": 60.0, "digits": 60.0, "shapes": 30.0, "scenes": 90.0, "phantom": 90.0}
#: what each dataset asks of a planner (the table's first column)
ABOUT = {
    "brain": "small 1-channel MRI slices of 3 shapes, thin CSF",
    "digits": "11 classes, each digit 0.3-0.5 % of the pixels",
    "shapes": "few small RGB canvases, a 4x class imbalance",
    "scenes": "RGB 512-640 px: whole images exceed a batch budget",
    "phantom": "16-bit CT values (HU + 1024), 12 classes, 4 under 0.5 %",
}
#: the plan's decisions RESULTS.md lists (in this order, those the plan made)
KEY_DECISIONS = ("model.variant", "model.depth", "model.width", "model.intensity", "model.clip", "batching.batch_size",
                 "patches", "patches.mode", "patches.patch_size", "patches.num_per_image", "loss.terms", "sampling",
                 "sampling.class_weights", "augment", "augment.scale", "augment.rotate", "train.learning_rate")
PLAN, UNET = "plan", "unet"
EVAL_POINTS = 3  # evaluations per run: scenes' cost ~30 s each (plan + U-Net)


# ---------------------------------------------------------------------------- pure helpers


def budgets(datasets: Sequence[str], seconds: float | None = None) -> dict[str, float]:
    """Training seconds per run for each dataset: :data:`SECONDS`, scaled so the longest is ``seconds``.

    >>> budgets(["shapes", "scenes"]), budgets(["shapes", "scenes"], 4)
    ({'shapes': 30.0, 'scenes': 90.0}, {'shapes': 1.3, 'scenes': 4.0})
    """
    scale = 1.0 if seconds is None else seconds / max(SECONDS.values())
    return {d: round(SECONDS[d] * scale, 1) for d in datasets}


def grid_count(length: int, patch: int, stride: int) -> int:
    """Patches along one axis under ``border="shift"`` (DESIGN: geometry rules).

    >>> grid_count(10, 4, 2), grid_count(11, 4, 2), grid_count(3, 4, 2)
    (4, 5, 1)
    """
    if length <= patch:
        return 1
    n = (length - patch) // stride + 1
    return n + (1 if (n - 1) * stride + patch < length else 0)


def items_per_epoch(config, shapes: Sequence[tuple[int, int]]) -> int:
    """What one epoch of ``config``'s training stream holds: images, or patches when it cuts them."""
    p = config.patches
    if p is None:
        return len(shapes)
    if p.mode == "grid":
        return sum(grid_count(h, p.patch_size[0], p.stride[0]) * grid_count(w, p.patch_size[1], p.stride[1])
                   for h, w in shapes)
    return len(shapes) * p.num_per_image


def one_class(per_class_iou: dict) -> bool:
    """Whether a run's predictions are (about) one class: at most one class has an IoU above 0.

    >>> one_class({"background": 0.9, "a": 0.0, "b": None}), one_class({"background": 0.9, "a": 0.1})
    (True, False)
    """
    return sum(1 for v in per_class_iou.values() if v) <= 1


def verdict(plan: list[float], unet: list[float]) -> str:
    """``plan ≥ U-Net`` or ``plan < U-Net`` by the means over seeds (the issue's criterion), with
    :func:`~fcndata.experiments.report.versus`'s word for how far apart the seeds are.

    >>> verdict([0.8, 0.82], [0.7, 0.72]), verdict([0.7, 0.9], [0.8, 0.81]), verdict([0.5, 0.52], [0.7, 0.72])
    ('plan ≥ U-Net (above)', 'plan < U-Net (level with)', 'plan < U-Net (below)')
    """
    from fcndata.experiments.report import versus

    sign = "≥" if float(np.mean(plan)) >= float(np.mean(unet)) else "<"
    return f"plan {sign} U-Net ({versus(plan, unet)})"


def _flow(value) -> str:
    import yaml

    text = yaml.safe_dump(value, default_flow_style=True, width=10**6, sort_keys=False).strip()
    return text.removesuffix("...").strip()


def decisions(sections: dict, reasons: dict) -> list[tuple[str, str, str]]:
    """(key, value, reason) rows of :data:`KEY_DECISIONS` the plan made (``absent`` for a section left out).

    >>> decisions({"model": {"width": 16}, "patches": None}, {"model.width": "CPU", "patches": "fits"})
    [('model.width', '16', 'CPU'), ('patches', 'absent', 'fits')]
    """
    rows = []
    for key in KEY_DECISIONS:
        section, _, name = key.partition(".")
        block = sections.get(section, {})
        if not name:
            if section in sections and block is None:
                rows.append((key, "absent", reasons.get(key, "")))
        elif block and name in block:
            rows.append((key, _flow(block[name]), reasons.get(key, "")))
    return rows


# ---------------------------------------------------------------------------- one dataset


def data_only_recipe(dataset: str, overrides: Sequence[str], path: Path) -> Path:
    """Writes ``path``: the bundled recipe's ``data:`` section with ``overrides`` applied (the
    ``data.*`` ones and any other section they name); the U-Net's base and the plan's input."""
    import yaml

    from fcndata.config import apply_overrides
    from fcndata.experiments.compare import _find_recipe

    source = _find_recipe(RECIPES[dataset])
    raw = apply_overrides({"data": yaml.safe_load(source.read_text())["data"]}, list(overrides))
    path.parent.mkdir(parents=True, exist_ok=True)
    header = (f"# The data section of {RECIPES[dataset]}"
              + (f" with --set {' '.join(overrides)}" if overrides else "")
              + ", as python -m fcndata.experiments.panel trains it:\n# the plan's input and the plain U-Net's "
              "base recipe (every other section at its default).\n")
    path.write_text(header + yaml.safe_dump(raw, sort_keys=False))
    return path


def with_overrides(config, overrides: Sequence[str]):
    """``config`` with ``--set`` overrides of sections other than ``data`` applied."""
    from fcndata.config import apply_overrides, config_from_dict, to_dict

    rest = [o for o in overrides if not o.strip().startswith("data.")]
    if not rest:
        return config
    raw = apply_overrides(to_dict(config), rest)
    out = config_from_dict(raw, name=config.source or "<plan>", given=config.given)
    return out.replace(data=dataclasses.replace(out.data, root=config.data.root))


def run_dataset(dataset: str, seconds: float, seeds: Sequence[int], out: Path, *, overrides: Sequence[str] = (),
                eval_points: int = EVAL_POINTS, max_steps: int | None = None,
                log: Callable[[str], None] = print) -> dict:
    """Plans ``dataset``, then trains the plan and the U-Net for ``seconds`` per seed; returns
    compare()'s results plus ``plan`` (sections, reasons, fingerprint facts) and ``epochs``."""
    from fcndata import plan as P
    from fcndata.config import load_config
    from fcndata.experiments import report
    from fcndata.experiments.compare import Setting, compare
    from fcndata.sources import source_shapes

    base_path = data_only_recipe(dataset, overrides, out / "recipes" / f"{dataset}.yaml")
    base = load_config(base_path)
    log(f"{dataset}: planning {base_path} for {seconds:g} s of training")
    p = P.plan(base, minutes=seconds / 60)
    (out / "plans").mkdir(parents=True, exist_ok=True)
    P.write_plan(p, out / "plans" / f"{dataset}.yaml", recipe=str(base_path))
    planned = with_overrides(p.config, overrides)
    log(P.format_decisions(p))
    settings = (
        Setting(PLAN, config=planned, about=f"fcndata.plan's recipe for this data (plans/{dataset}.yaml)"),
        Setting(UNET, trainer="unet", about="the plain Keras U-Net (fcndata.experiments.baseline), Adam 1e-3, "
                                            f"batch {base.batching.batch_size} of whole images"),
    )
    results = compare(str(base_path), settings, seconds=seconds, seeds=seeds, eval_points=eval_points,
                      max_steps=max_steps, out_dir=out / dataset, log=log)
    _, shapes = source_shapes(base.data, "train")
    per_epoch = {PLAN: items_per_epoch(planned, shapes), UNET: len(shapes)}
    batch = {PLAN: planned.batching.batch_size, UNET: base.batching.batch_size}
    for run in results["runs"]:
        run["epochs"] = round(run["steps"] * batch[run["setting"]] / per_epoch[run["setting"]], 2)
        run["one_class"] = one_class(run["per_class_iou"])
    fp = p.fingerprint
    results["dataset"] = dataset
    results["about"] = ABOUT[dataset]
    results["plan"] = {"sections": p.sections, "reasons": p.reasons,
                       "fingerprint": {k: v for k, v in dataclasses.asdict(fp).items()
                                       if isinstance(v, (int, float, str, bool, type(None)))}}
    results["items_per_epoch"] = per_epoch
    report.write(results, out / dataset, title=f"{dataset}: the plan vs the plain U-Net at equal wall-clock",
                 paragraph=paragraph)
    return results


def paragraph(summary: dict, results: dict) -> str:
    """"What the data say" for one dataset of the panel (report.write's paragraph)."""
    if PLAN not in summary or UNET not in summary:
        return "The plan or the U-Net was not run, so they are not compared."
    s, u = summary[PLAN], summary[UNET]
    text = (f"The plan ended at {s['mean']:.3f} and the U-Net at {u['mean']:.3f} mean IoU: "
            f"{verdict(s['finals'], u['finals'])}, at {s['s_per_step']:.3f} vs {u['s_per_step']:.3f} s per step.")
    flagged = [n for n in (PLAN, UNET) if any(r["one_class"] for r in results["runs"] if r["setting"] == n)]
    if flagged:
        text += f" {' and '.join(flagged)} predicted one class only in some run (all-background)."
    from fcndata.experiments.report import single_seed_note

    return text + single_seed_note(summary)


# ---------------------------------------------------------------------------- the panel report


def _final(s: dict) -> str:
    return f"{s['mean']:.3f}" if s["sd"] is None else f"{s['mean']:.3f} ± {s['sd']:.3f}"


def _iou(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _epochs(value: float) -> str:
    return f"{value:.1f}" if value >= 1 else f"{value:.2f}"


def markdown(panel: dict) -> str:
    """The panel's RESULTS.md text, every number from ``panel`` (results.json)."""
    from fcndata.experiments.report import machine_lines, summarize

    runs = {d: r for d, r in panel["datasets"].items()}
    lines = [
        "# The plan against a plain U-Net on a panel of unlike datasets (issue 24)",
        "",
        (f"Written by `{panel.get('command', '(command not recorded)')}`; every number below is computed from "
         "`results.json` next to this file (each dataset's own comparison is in `<dataset>/RESULTS.md`)."),
        *[f"Then `{c}` reran {', '.join(ds)} (`--update`: the other datasets' rows are the earlier run's)."
          for c, ds in panel.get("updates", [])],
        "",
        *machine_lines(panel["machine_start"], panel.get("machine_end")),
        (f"- per run, training seconds (training steps, input pipeline included; graph tracing and evaluations "
         f"excluded): {', '.join(f'{d} {s:g} s' for d, s in panel['seconds'].items())}; "
         f"{len(panel['seeds'])} seed(s) ({', '.join(map(str, panel['seeds']))}), plan and U-Net round-robin; "
         f"validation evaluated {panel['eval_points']} times per run"
         + (f"; at most {panel['max_steps']} steps per run" if panel.get("max_steps") else "")),
        ("- plan: `fcndata.plan.plan(data-only recipe, minutes=budget / 60)`, trained as planned; U-Net: the plain "
         "Keras U-Net of `fcndata.experiments.baseline` (3 levels 16/32/64 + 128, Adam 1e-3, whole zero-padded "
         "images scaled to [0, 1], no augmentation, the base recipe's batch size: 4 unless overridden)"),
        ("- epochs: images (or patches) seen / one epoch of the arm's training stream; all-background: a run whose "
         "last evaluation has at most one class with IoU > 0"),
    ]
    if panel.get("overrides"):
        lines.append(f"- overrides for every dataset: `--set {' '.join(panel['overrides'])}`")
    lines += ["", "## Summary", "",
              "Mean IoU over the validation split: mean ± sd over seeds; s/step: median step time.", "",
              ("| dataset | what the planner must adapt to | s/run | plan mean IoU | U-Net mean IoU | verdict | "
               "plan s/step | U-Net s/step | plan epochs | U-Net epochs | all-background |"),
              "|---" * 11 + "|"]
    summaries = {}
    for d, results in runs.items():
        summary = summarize(results)
        summaries[d] = summary
        if PLAN not in summary or UNET not in summary:
            lines.append(f"| {d} | {results.get('about', '')} | {results['seconds']:g} | (not run) |||||||| ")
            continue
        s, u = summary[PLAN], summary[UNET]
        ep = {n: np.mean([r["epochs"] for r in results["runs"] if r["setting"] == n]) for n in (PLAN, UNET)}
        flags = [f"{n} {sum(r['one_class'] for r in results['runs'] if r['setting'] == n)}/{len(s['finals'])}"
                 for n in (PLAN, UNET) if any(r["one_class"] for r in results["runs"] if r["setting"] == n)]
        lines.append(f"| {d} | {results.get('about', '')} | {results['seconds']:g} | {_final(s)} | {_final(u)} | "
                     f"{verdict(s['finals'], u['finals'])} | {s['s_per_step']:.3f} | {u['s_per_step']:.3f} | "
                     f"{_epochs(ep[PLAN])} | {_epochs(ep[UNET])} | {', '.join(flags) or 'none'} |")
    lines += ["", "![validation mean IoU vs training seconds, per dataset](curves.png)", ""]
    for d, results in runs.items():
        summary, names = summaries[d], results["class_names"]
        fraction = results.get("class_fraction") or []
        lines += [f"## {d}", "", (f"Data: `{results['base']}` ({results.get('about', '')}); details in "
                                  f"[{d}/RESULTS.md]({d}/RESULTS.md), the plan in `plans/{d}.yaml`."), ""]
        if fraction:
            lines += ["Training pixels per class: "
                      + ", ".join(f"{n} {100 * f:.2f} %" for n, f in zip(names, fraction)) + ".", ""]
        lines += ["| arm | seeds | mean IoU | " + " | ".join(names) + " | s/step | steps | epochs |",
                  "|---" * (6 + len(names)) + "|"]
        for n, s in summary.items():
            epochs = np.mean([r["epochs"] for r in results["runs"] if r["setting"] == n])
            lines.append(f"| {n} | {len(s['finals'])} | {_final(s)} | "
                         + " | ".join(_iou(s["per_class"][c]) for c in names)
                         + f" | {s['s_per_step']:.3f} | {s['steps']:.0f} | {_epochs(epochs)} |")
        rows = decisions(results["plan"]["sections"], results["plan"]["reasons"])
        if rows:
            later = [o for o in panel.get("overrides", ()) if not o.strip().startswith("data.")]
            note = f" (as planned; trained with `--set {' '.join(later)}` on top)" if later else ""
            lines += ["", f"The plan's key decisions{note}:", "", "| key | value | the fact that chose it |", "|---|---|---|"]
            lines += [f"| `{k}` | `{v}` | {r.replace('|', '/')} |" for k, v, r in rows]
        lines.append("")
    return "\n".join(lines)


def plot(panel: dict, path: str | Path) -> None:
    """curves.png: one panel per dataset, validation mean IoU vs training seconds (thin: a seed, thick: the mean)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from fcndata.experiments.report import summarize

    datasets = list(panel["datasets"])
    fig = Figure(figsize=(3.6 * max(len(datasets), 1), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, max(len(datasets), 1), squeeze=False)[0]
    colours = {PLAN: "tab:blue", UNET: "tab:orange"}
    for ax, d in zip(axes, datasets):
        for n, s in summarize(panel["datasets"][d]).items():
            for c in s["curves"]:
                ax.plot([p["seconds"] for p in c], [p["mean_iou"] for p in c], color=colours.get(n), lw=0.7, alpha=0.5)
            k = min(len(c) for c in s["curves"])
            ax.plot([np.mean([c[i]["seconds"] for c in s["curves"]]) for i in range(k)],
                    [np.mean([c[i]["mean_iou"] for c in s["curves"]]) for i in range(k)],
                    color=colours.get(n), lw=2, marker="o", ms=3, label=n)
        ax.set_title(d, fontsize=10)
        ax.set_xlabel("training seconds")
        ax.grid(alpha=0.3)
    axes[0].set_ylabel("validation mean IoU")
    axes[0].legend(fontsize=8)
    fig.savefig(path, dpi=100)


def write(panel: dict, out: str | Path) -> list[Path]:
    """Writes RESULTS.md, curves.png and results.json into ``out``; returns their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "RESULTS.md", out / "curves.png", out / "results.json"]
    paths[2].write_text(json.dumps(panel, indent=1, default=str))
    plot(panel, paths[1])
    paths[0].write_text(markdown(panel))
    return paths


# ---------------------------------------------------------------------------- command line


def run_panel(datasets: Sequence[str], *, seconds: float | None = None, seeds: Sequence[int] = (0, 1, 2),
              out: str | Path = "experiments/panel", overrides: Sequence[str] = (), eval_points: int = EVAL_POINTS,
              max_steps: int | None = None, command: str | None = None, log: Callable[[str], None] = print,
              update: bool = False) -> dict:
    """Runs the panel on ``datasets`` and writes its outputs into ``out``; returns results.json's content.

    ``update``: ``out/results.json`` of an earlier panel keeps its other datasets; the ones given
    are rerun and replace theirs (RESULTS.md names the rerun and its command).
    """
    from fcndata.experiments.report import machine_facts

    unknown = [d for d in datasets if d not in RECIPES]
    if unknown or not datasets:
        raise ValueError(f"panel: datasets must be some of {list(RECIPES)}. Received: --datasets {','.join(datasets)}")
    out = Path(out)
    panel = {"command": command, "datasets": {}, "seconds": budgets(datasets, seconds), "seeds": list(seeds),
             "eval_points": eval_points, "max_steps": max_steps, "overrides": list(overrides),
             "machine_start": machine_facts()}
    previous = out / "results.json"
    if update and previous.is_file():
        earlier = json.loads(previous.read_text())
        earlier["seconds"] = {**earlier["seconds"], **panel["seconds"]}
        earlier["updates"] = [*earlier.get("updates", []), [command, list(datasets)]]
        panel = earlier
    for d in datasets:
        panel["datasets"][d] = run_dataset(d, panel["seconds"][d], seeds, out, overrides=overrides,
                                           eval_points=eval_points, max_steps=max_steps, log=log)
        panel["machine_end"] = machine_facts()
        write(panel, out)  # after every dataset: a stopped panel keeps what it measured
    return panel


def main(argv: Sequence[str] | None = None) -> int:
    from fcndata import cli

    parser = cli.command_parser("python -m fcndata.experiments.panel", __doc__, recipe=False,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--datasets", default=",".join(RECIPES),
                        help=f"comma-separated, some of {','.join(RECIPES)} (default: all)")
    parser.add_argument("--seconds", type=float,
                        help="the longest per-run training budget; the others keep their proportion (default: "
                             + ", ".join(f"{d} {s:g}" for d, s in SECONDS.items()) + ")")
    parser.add_argument("--seeds", type=int, default=3, help="seeds per arm: train.seed 0..N-1 (default 3)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="SECTION.KEY=VALUE",
                        help="override one value for every dataset (data.* before planning), repeatable")
    parser.add_argument("--eval-points", type=int, default=EVAL_POINTS,
                        help=f"evaluations per run, evenly spaced (default {EVAL_POINTS})")
    parser.add_argument("--max-steps", type=int, help="stop a run after this many steps too (smoke runs)")
    parser.add_argument("--out", default="experiments/panel", help="output folder (default experiments/panel)")
    parser.add_argument("--update", action="store_true",
                        help="keep the other datasets of OUT/results.json; rerun only --datasets")
    args = parser.parse_args(argv)
    datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    command = shlex.join(["python", "-m", "fcndata.experiments.panel", *(sys.argv[1:] if argv is None else argv)])

    def body() -> int:
        if args.seeds < 1:
            raise ValueError(f"--seeds is the number of seeds per arm, >= 1. Received: --seeds {args.seeds}")
        if args.seconds is not None and args.seconds <= 0:
            raise ValueError(f"--seconds must be > 0. Received: --seconds {args.seconds}")
        run_panel(datasets, seconds=args.seconds, seeds=list(range(args.seeds)), out=args.out,
                  overrides=args.overrides, eval_points=args.eval_points, max_steps=args.max_steps, command=command,
                  update=args.update)
        print(f"python -m fcndata.experiments.panel: results in {Path(args.out) / 'RESULTS.md'}, curves.png, "
              "results.json")
        return 0

    return cli.run(body, debug=args.debug)


if __name__ == "__main__":
    sys.exit(main())
