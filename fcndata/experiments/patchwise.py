"""``python -m fcndata.experiments.patchwise``: FCN §4.4 — patchwise vs whole-image training.

The FCN paper (Long, Shelhamer & Darrell, §4.4) found that "patchwise training is loss
sampling": sampling the loss did not converge faster per iteration and cost wall-clock
(more images per batch), and class balancing was unnecessary at ~3/4 background. This
preset trains the base recipe's network under the same wall-clock budget with:

  (a) whole_images        the base recipe itself (whole slices, padded, roi-masked)
  (b) grid_patches        overlapping 64² grid patches, stride 32, 4 images mixed per batch
  (c) loss_sampling_p0.5  whole images, each pixel's loss kept with p = 0.5, 2× images per batch
      loss_sampling_p0.25 the same with p = 0.25, 4× images per batch
  (d) balanced_patches    class-balanced 64² patches (a class drawn uniformly, then a pixel)
  (e) class_weights       whole images, median-frequency class weights in the loss
  (f) unet                the plain Keras U-Net of fcndata.experiments.baseline (reference)

Each fcndata setting is a recipe in ``pipelines/`` (``brain_grid_patches.yaml``, ...), so
one can be rerun with ``python -m fcndata.train --config``; here every setting trains the
base recipe's data, augmentation and model (see :mod:`fcndata.experiments.compare`).
Writes ``experiments/patchwise/RESULTS.md``, ``curves.png`` and ``results.json``::

    python -m fcndata.experiments.patchwise --config pipelines/brain_fullimage.yaml
    python -m fcndata.experiments.patchwise --seconds 120 --seeds 0 1 2 3
    python -m fcndata.experiments.patchwise --only whole_images loss_sampling_p0.5 --seeds 0
"""

from __future__ import annotations

import sys

from fcndata.experiments.compare import Setting
from fcndata.experiments.compare import main as compare_main
from fcndata.experiments.report import ious_at_steps, ranking, single_seed_note, versus

SETTINGS = (
    Setting("whole_images", None, about="(a) whole images, padded per batch, roi-masked loss"),
    Setting("grid_patches", "pipelines/brain_grid_patches.yaml",
            about="(b) overlapping 64² grid patches (stride 32), 4 images mixed per batch of 32"),
    Setting("loss_sampling_p0.5", "pipelines/brain_loss_sampling_p50.yaml",
            about="(c) whole images, loss kept per pixel with p = 0.5, images per batch ×2"),
    Setting("loss_sampling_p0.25", "pipelines/brain_loss_sampling_p25.yaml",
            about="(c) whole images, loss kept per pixel with p = 0.25, images per batch ×4"),
    Setting("balanced_patches", "pipelines/brain_balanced_patches.yaml",
            about="(d) class-balanced 64² patches, 4 per image, batch of 32"),
    Setting("class_weights", "pipelines/brain_class_weights.yaml",
            about="(e) whole images, median-frequency class weights in the loss"),
    Setting("unet", trainer="unet", about="(f) reference: the plain Keras U-Net a user writes (issue 13)"),
)
WHOLE = "whole_images"
SAMPLING = ("loss_sampling_p0.5", "loss_sampling_p0.25")
BALANCING = ("balanced_patches", "class_weights")


def paragraph(summary: dict, results: dict) -> str:
    """"What the data say", next to FCN §4.4, templated from the measured numbers."""
    s = summary
    if WHOLE not in s:
        return "The whole-image setting was not run, so nothing here is compared with the paper's finding."

    def final(n):
        return f"{s[n]['mean']:.3f}"

    def rel(n):
        return versus(s[n]["finals"], s[WHOLE]["finals"])

    budget = f"{results['seconds']:g} s"
    out = []
    sampled = [n for n in SAMPLING if n in s]
    if sampled:
        # Per iteration: every setting's curve read at the fewest iterations any of them reached.
        common = min(min(c[-1]["steps"] for c in s[n]["curves"]) for n in (WHOLE, *sampled))
        at = {n: ious_at_steps(s, n, common) for n in (WHOLE, *sampled)}
        per_iter = [f"{n} {sum(at[n]) / len(at[n]):.3f} ({versus(at[n], at[WHOLE])} whole images' "
                    f"{sum(at[WHOLE]) / len(at[WHOLE]):.3f})" for n in sampled]
        faster = [n for n in sampled if versus(at[n], at[WHOLE]) == "above"]
        if not faster:
            verdict = "Loss sampling did not converge faster per iteration, as the paper found"
        elif len(faster) == len(sampled):
            verdict = "Loss sampling converged faster per iteration than whole images, unlike the paper"
        else:
            verdict = (f"Per iteration, {' and '.join(faster)} converged faster than whole images (unlike the paper), "
                       f"{' and '.join(n for n in sampled if n not in faster)} did not")
        cost = ", ".join(f"{n} {s[n]['s_per_step'] / s[WHOLE]['s_per_step']:.2f}× ({s[n]['steps']:.0f} "
                         f"iterations, final {final(n)}, {rel(n)} whole images)" for n in sampled)
        dearer = all(s[n]["s_per_step"] > s[WHOLE]["s_per_step"] for n in sampled)
        out.append(
            f"{verdict}: at {common} iterations (the fewest any of them reached) "
            f"{'; '.join(per_iter)}. Seeing 1/p more images per batch, its steps took "
            f"{cost} the seconds per step of whole images ({s[WHOLE]['steps']:.0f} iterations, final "
            f"{final(WHOLE)}); so {'as in the paper it cost wall-clock' if dearer else 'unlike the paper it cost no wall-clock per step'}"
            f" within the {budget} budget."
        )
    if "grid_patches" in s:
        ratio = s["grid_patches"]["s_per_step"] / s[WHOLE]["s_per_step"]
        out.append(f"Overlapping grid patches ended at {final('grid_patches')}, {rel('grid_patches')} whole images' "
                   f"{final(WHOLE)}, at {ratio:.2f}× the seconds per step.")
    balanced = [n for n in BALANCING if n in s]
    if balanced:
        names, fraction = results["class_names"], results.get("class_fraction") or []
        background = f"{100 * fraction[0]:.0f} %" if fraction else "an unmeasured share"
        rare = min(range(len(names)), key=lambda i: fraction[i]) if fraction else None
        words = {n: rel(n) for n in balanced}
        if any(w == "above" for w in words.values()):
            verdict = "here balancing helped the mean IoU, unlike the paper's finding"
        elif all(w == "below" for w in words.values()):
            verdict = "here it cost mean IoU: not needed, as the paper found"
        else:
            verdict = "here it bought nothing beyond the seed spread either"
        rare_text = ""
        if rare is not None:
            r = names[rare]
            rare_text = (f"; on the rarest class, {r} ({100 * fraction[rare]:.1f} % of pixels), whole images scored "
                         f"{_iou(s[WHOLE]['per_class'][r])} and "
                         + ", ".join(f"{n} {_iou(s[n]['per_class'][r])}" for n in balanced))
        out.append(
            f"Class balancing: with background {background} of the training pixels, "
            + ", ".join(f"{n} ended at {final(n)}, {words[n]} whole images" for n in balanced)
            + f"{rare_text}. The paper found balancing unnecessary at ~3/4 background; {verdict}."
        )
    best = ranking({n: v for n, v in s.items() if n != "unet"})
    if "unet" in s and best:
        out.append(f"The plain U-Net reference ended at {final('unet')}, "
                   f"{versus(s['unet']['finals'], s[best[0]]['finals'])} the best fcndata setting, "
                   f"{best[0]} ({final(best[0])}).")
    elif best:
        out.append(f"Best setting: {best[0]} ({final(best[0])}).")
    return " ".join(out) + single_seed_note(s)


def _iou(value) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main(argv=None) -> int:
    return compare_main(
        argv,
        prog="python -m fcndata.experiments.patchwise",
        description=__doc__,
        settings=SETTINGS,
        default_config="pipelines/brain_fullimage.yaml",
        default_out="experiments/patchwise",
        default_seconds=60,
        default_seeds=(0, 1, 2),
        paragraph=paragraph,
        title="Patchwise vs whole-image training at equal wall-clock (FCN §4.4)",
    )


if __name__ == "__main__":
    sys.exit(main())
