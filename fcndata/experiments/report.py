"""What a comparison writes: ``RESULTS.md``, ``curves.png`` and ``results.json``.

Every number in ``RESULTS.md`` is computed here from the runs in ``results.json`` (the
output of :func:`fcndata.experiments.compare.compare`), and the preset's paragraph is
templated from the same summary: rerun the command and the text follows the data.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from collections.abc import Callable
from pathlib import Path

import numpy as np


def machine_facts() -> dict:
    """CPU model, cores, TensorFlow / Keras / Python versions, UTC date and load average."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    facts = {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(terse=True),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
    }
    # From the installed distributions: a benchmark runner need not import TensorFlow to say which it is.
    from importlib import metadata

    for key, dists in (("tensorflow", ("tensorflow", "tensorflow-cpu")), ("keras", ("keras",))):
        for dist in dists:
            try:
                facts[key] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
    return facts


def machine_lines(start: dict, end: dict | None = None) -> list[str]:
    """Markdown bullet lines of :func:`machine_facts` (load at start and, if given, end)."""
    lines = [
        f"- machine: {start['cpu']}, {start['cores']} cores; {start['platform']}",
        (f"- software: TensorFlow {start.get('tensorflow', '?')}, Keras {start.get('keras', '?')}, "
         f"Python {start['python']}"),
        f"- date: {start['date']}" + (f" to {end['date']}" if end else ""),
    ]
    load = f"- load average (1/5/15 min): {_load(start)} at the start"
    lines.append(load + (f", {_load(end)} at the end" if end else ""))
    return lines


def _load(facts: dict) -> str:
    return "/".join(f"{x:.2f}" for x in facts["load_average"]) if facts.get("load_average") else "n/a"


# ---------------------------------------------------------------------------- summary


def summarize(results: dict) -> dict:
    """Per setting (in the results' order): the seeds' final mean IoU and their spread,
    per-class IoU means, median seconds per step, steps, evaluation and compile seconds,
    and each run's curve."""
    names = results["class_names"]
    out = {}
    for s in results["settings"]:
        runs = [r for r in results["runs"] if r["setting"] == s["name"]]
        if not runs:
            continue
        finals = np.array([r["mean_iou"] for r in runs])
        per_class = {n: _nanmean([r["per_class_iou"].get(n) for r in runs]) for n in names}
        out[s["name"]] = {
            "about": s["about"],
            "finals": finals.tolist(),
            "mean": float(finals.mean()),
            "sd": float(finals.std(ddof=1)) if len(finals) > 1 else None,
            "min": float(finals.min()),
            "max": float(finals.max()),
            "per_class": per_class,
            "s_per_step": float(np.median([r["s_per_step"] for r in runs])),
            "steps": float(np.mean([r["steps"] for r in runs])),
            "seconds": float(np.mean([r["seconds"] for r in runs])),
            "eval_s": float(np.mean([r["eval_s"] for r in runs])),
            "compile_s": float(np.mean([r["compile_s"] for r in runs])),
            "curves": [r["curve"] for r in runs],
        }
    return out


def _nanmean(values) -> float | None:
    x = np.array([np.nan if v is None else v for v in values], np.float64)
    return None if np.all(np.isnan(x)) else float(np.nanmean(x))


def ious_at_steps(summary: dict, name: str, steps: float) -> list[float]:
    """The setting's mean IoU at ``steps`` iterations, one value per seed (its curve interpolated)."""
    return [float(np.interp(steps, [p["steps"] for p in c], [p["mean_iou"] for p in c])) for c in summary[name]["curves"]]


def versus(x: list[float], y: list[float]) -> str:
    """How values ``x`` (one per seed) compare with ``y``, given the seeds' spread.

    ``"above"`` / ``"below"`` when the ranges do not overlap, ``"level with"`` when they do.
    With a single value on either side there is no spread: the means decide, "level with"
    if they agree to the third decimal (the report says so once).

    >>> versus([0.8, 0.82], [0.7, 0.72]), versus([0.7, 0.72], [0.8, 0.82]), versus([0.7, 0.9], [0.8])
    ('above', 'below', 'level with')
    >>> versus([0.8], [0.7]), versus([0.0871], [0.0868])
    ('above', 'level with')
    """
    if len(x) > 1 and len(y) > 1 or len(x) != len(y):
        if min(x) > max(y):
            return "above"
        if max(x) < min(y):
            return "below"
        return "level with"
    diff = float(np.mean(x) - np.mean(y))
    return "level with" if abs(diff) < 0.0005 else "above" if diff > 0 else "below"


def single_seed_note(summary: dict) -> str:
    """A sentence for the paragraph when some setting ran one seed (no spread measured)."""
    if any(len(s["finals"]) < 2 for s in summary.values()):
        return (" With one seed per setting no spread was measured: 'above' and 'below' compare single runs, "
                "and a rerun with more seeds (--seeds 0 1 2) may reorder settings that are close.")
    return ""


def ranking(summary: dict) -> list[str]:
    """Setting names by final mean IoU, best first."""
    return sorted(summary, key=lambda n: -summary[n]["mean"])


# ---------------------------------------------------------------------------- outputs


def _iou(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def _final(s: dict) -> str:
    if s["sd"] is None:
        return f"{s['mean']:.3f}"
    return f"{s['mean']:.3f} ± {s['sd']:.3f} ({s['min']:.3f}–{s['max']:.3f})"


def markdown(results: dict, title: str, paragraph: str) -> str:
    """The RESULTS.md text."""
    summary = summarize(results)
    names = results["class_names"]
    seeds = results["seeds"]
    fraction = results.get("class_fraction") or []
    lines = [
        f"# {title}",
        "",
        (f"Written by `{results.get('command', '(command not recorded)')}`; every number below is computed from "
         "`results.json` next to this file."),
        "",
        *machine_lines(results["machine_start"], results.get("machine_end")),
        f"- budget: {results['seconds']:g} s of training per run (training steps, input pipeline included; graph "
        "tracing — the first step and retraces on a new batch shape — and the evaluations are excluded and listed "
        "apart as compile s and eval s); "
        f"{len(seeds)} seed(s) per setting ({', '.join(map(str, seeds))}), run round-robin; validation evaluated "
        f"{results['eval_points']} times per run"
        + (f"; at most {results['max_steps']} steps per run" if results.get("max_steps") else ""),
        f"- base recipe: `{results['base']}`" + (f" with `--set {' '.join(results['overrides'])}`"
                                                 if results.get("overrides") else "")
        + "; every setting trains its `data`, `augment` and `model` sections",
    ]
    if fraction:
        lines.append("- training pixels per class: " + ", ".join(f"{n} {100 * f:.1f} %" for n, f in zip(names, fraction)))
    lines += ["", "## What the data say", "", paragraph, "", "## Final validation IoU", ""]
    lines.append("Mean IoU: mean ± sd over seeds (min–max); per-class IoU: mean over seeds; s/step: median step "
                 "time; steps: iterations reached in the budget (mean over seeds).")
    lines.append("")
    lines.append("| setting | seeds | mean IoU | " + " | ".join(names) + " | s/step | steps | compile s | eval s |")
    lines.append("|---" * (7 + len(names)) + "|")
    for name, s in summary.items():
        per = " | ".join(_iou(s["per_class"][n]) for n in names)
        lines.append(f"| {name} | {len(s['finals'])} | {_final(s)} | {per} | {s['s_per_step']:.3f} | "
                     f"{s['steps']:.0f} | {s['compile_s']:.1f} | {s['eval_s']:.1f} |")
    lines += ["", "![mean IoU vs seconds and vs iterations](curves.png)", "", "## The settings", ""]
    lines.append("| setting | what it is | recipe | differs from the base recipe in |")
    lines.append("|---|---|---|---|")
    for s in results["settings"]:
        recipe = s["recipe"] + (f" `--set {' '.join(s['overrides'])}`" if s["overrides"] else "")
        lines.append(f"| {s['name']} | {s['about']} | `{recipe}` | "
                     f"{', '.join(f'`{d}`' for d in s['differences']) or '(nothing: the base)'} |")
    lines += ["", "## Every run", "", "| setting | seed | mean IoU | steps | train s | s/step | curve (s: mean IoU) |",
              "|---|---|---|---|---|---|---|"]
    for r in results["runs"]:
        curve = ", ".join(f"{p['seconds']:.0f}: {p['mean_iou']:.3f}" for p in r["curve"])
        lines.append(f"| {r['setting']} | {r['seed']} | {r['mean_iou']:.3f} | {r['steps']} | {r['seconds']:.1f} | "
                     f"{r['s_per_step']:.3f} | {curve} |")
    return "\n".join(lines) + "\n"


def plot_curves(results: dict, path: str | Path) -> None:
    """curves.png: validation mean IoU vs training seconds and vs iterations, one colour per
    setting: a thin line per seed and a thick one through the seeds' mean."""
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    summary = summarize(results)
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    colours = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (name, s) in enumerate(summary.items()):
        colour = colours[i % len(colours)]
        for ax, key in zip(axes, ("seconds", "steps")):
            for curve in s["curves"]:
                ax.plot([p[key] for p in curve], [p["mean_iou"] for p in curve], color=colour, lw=0.7, alpha=0.5)
            points = min(len(c) for c in s["curves"])
            mean_x = [np.mean([c[k][key] for c in s["curves"]]) for k in range(points)]
            mean_y = [np.mean([c[k]["mean_iou"] for c in s["curves"]]) for k in range(points)]
            ax.plot(mean_x, mean_y, color=colour, lw=2, marker="o", ms=3, label=name if key == "seconds" else None)
    axes[0].set_xlabel("training seconds (evaluation excluded)")
    axes[1].set_xlabel("iterations")
    for ax in axes:
        ax.set_ylabel("validation mean IoU")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.suptitle(f"{results['base']}: {results['seconds']:g} s per run, seeds {results['seeds']} "
                 "(thin: one seed, thick: mean)", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write(results: dict, out_dir: str | Path, *, title: str, paragraph: Callable[[dict, dict], str]) -> list[Path]:
    """Writes results.json, curves.png and RESULTS.md into ``out_dir``; returns their paths.

    ``paragraph(summary, results)`` gets :func:`summarize`'s output and the raw results and
    returns the text of "What the data say".
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = [out / "RESULTS.md", out / "curves.png", out / "results.json"]
    paths[2].write_text(json.dumps(results, indent=1))
    plot_curves(results, paths[1])
    text = paragraph(summarize(results), results)
    paths[0].write_text(markdown(results, title, text))
    return paths
