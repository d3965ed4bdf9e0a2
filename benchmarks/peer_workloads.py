"""One workload of `make bench-peers`, run by one tool, in its own process.

    python benchmarks/peer_workloads.py TOOL WORKLOAD [--quick] [--scale K] [--variant NAME]

TOOL is ``monai``, ``torchio`` or ``fcndata``; WORKLOAD one of :data:`WORKLOADS`. The
process imports numpy and its own tool only (fcndata runs in the project's venv, MONAI and
TorchIO in ``.venv-peers``), so the three tools never share an interpreter. It

1. limits every thread pool to 2 (before the tool is imported: OMP/MKL variables, then
   ``torch.set_num_threads`` or TensorFlow's intra/inter op pools),
2. builds the same data from numpy seed 0, in the layout the tool wants (channel-last
   for fcndata, channel-first for MONAI and TorchIO; that conversion is not timed),
3. prints ``READY`` and waits for one line on stdin (the driver reads its memory baseline
   between the two),
4. runs the workload, the timer started before the tool's dataset / loader / predictor
   objects are built,
5. checks the first patch (or the stitched output) against numpy and prints one JSON line
   ``{tool, workload, items, seconds, rate, check, settings}``; ``check`` is ``"ok"`` or
   what was wrong.

``benchmarks/peers.py`` runs every (workload, tool) pair and writes benchmarks/PEERS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

THREADS = 2
for _var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
    os.environ[_var] = str(THREADS)

import numpy as np  # noqa: E402

TOOLS = ("monai", "torchio", "fcndata")
WORKLOADS = ("grid512", "grid8192", "balanced512", "balanced8192", "sliding512", "sliding8192")
#: GiB each worker touches and frees before its baseline: about the largest peak of any
#: tool in the workload (PEERS.md), the same for every tool of a workload.
WARM_GIB = {"balanced8192": 2, "sliding8192": 3}
NUM_CLASSES = 4
CLASS_FREQUENCIES = (0.70, 0.20, 0.08, 0.02)
#: Largest difference allowed between a stitched identity prediction and its input.
SLIDING_TOLERANCE = 1e-5


# ---------------------------------------------------------------------------- the workloads


def workload_spec(name: str, quick: bool, scale: int = 1) -> dict:
    """Sizes of one workload: which data, patch, stride, batch, passes, balanced patch count.

    ``--quick`` keeps the shapes of the work (grid, balanced, sliding) on tiny data: 4 images
    of 256², a 1024² "big" image, one pass. ``scale`` multiplies the patches asked for (the
    passes over the data; the balanced 8192² patch count) with the same data and set-up, to
    tell a tool's fixed cost from its cost per patch; sliding windows have no passes to scale.

    >>> [workload_spec(w, False, 4)["passes"] for w in ("grid512", "grid8192", "balanced8192")]
    [16, 4, 1]
    >>> workload_spec("balanced8192", False, 4)["per_image"]
    2048
    """
    small = name.endswith("512")
    if scale != 1 and name.startswith("sliding"):
        raise ValueError(f"--scale {scale}: the sliding workloads predict each image once; scale grid or balanced")
    by_count = name == "balanced8192"  # one pass over one image: scaled by its patch count
    spec = {
        "data": "set" if small else "big",
        "patch": 128 if small else 256,
        "stride": 64 if small else 128,
        "batch": 64 if small else 16,
        "passes": ((1 if quick else 4) if small else 1) * (1 if by_count else scale),
        "per_image": 16 if small else (64 if quick else 512) * (scale if by_count else 1),
    }
    return spec


def make_data(kind: str, quick: bool) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The images ([H, W, 3] uint8, random) and labels ([H, W] uint8, 4 classes in square
    blocks: 32 px for the set, 128 px for the big image; classes about 70/20/8/2 %)."""
    rng = np.random.default_rng(0)
    if kind == "set":
        count, size, block = (4, 256, 32) if quick else (32, 512, 32)
    else:
        count, size, block = (1, 1024, 128) if quick else (1, 8192, 128)
    images, labels = [], []
    for _ in range(count):
        images.append(rng.integers(0, 256, (size, size, 3), dtype=np.uint8))
        grid = rng.choice(NUM_CLASSES, size=(size // block, size // block), p=CLASS_FREQUENCIES).astype(np.uint8)
        labels.append(np.repeat(np.repeat(grid, block, axis=0), block, axis=1))
    return images, labels


# ---------------------------------------------------------------------------- checks


def check_patch(image_hwc, label_hw, origin, patch_image_hwc, patch_label_hw, inside: bool = False) -> str:
    """``"ok"`` when a patch equals the numpy slice of its source at ``origin`` (y, x), for
    image and label; else what differs. ``inside``: the patch must also lie wholly inside the
    image (balanced patches)."""
    y, x = (int(v) for v in origin)
    ph, pw = np.asarray(patch_image_hwc).shape[:2]
    h, w = image_hwc.shape[:2]
    if np.asarray(patch_label_hw).shape[:2] != (ph, pw):
        return f"label patch {np.asarray(patch_label_hw).shape} differs from image patch {(ph, pw)}"
    if inside and not (0 <= y and 0 <= x and y + ph <= h and x + pw <= w):
        return f"patch at origin ({y}, {x}) size {ph}x{pw} is not inside the {h}x{w} image"
    want_image = image_hwc[max(y, 0) : y + ph, max(x, 0) : x + pw]
    if want_image.shape[:2] != (ph, pw):
        return f"patch at origin ({y}, {x}) size {ph}x{pw} leaves the {h}x{w} image"
    bad = int((np.asarray(patch_image_hwc) != want_image).sum())
    if bad:
        return f"image patch at origin ({y}, {x}) differs from the source in {bad} values"
    bad = int((np.asarray(patch_label_hw).reshape(ph, pw) != label_hw[y : y + ph, x : x + pw]).sum())
    if bad:
        return f"label patch at origin ({y}, {x}) differs from the source in {bad} pixels"
    return "ok"


def check_stitched(output_hwc, image_hwc_uint8) -> str:
    """``"ok"`` when a stitched identity prediction equals the input / 255 within
    :data:`SLIDING_TOLERANCE`."""
    out = np.asarray(output_hwc)
    if out.shape != image_hwc_uint8.shape:
        return f"output shape {out.shape} differs from the input's {image_hwc_uint8.shape}"
    err = 0.0
    for y in range(0, out.shape[0], 256):  # in bands of rows: the check must not set the row's peak memory
        want = image_hwc_uint8[y : y + 256].astype(np.float32) / np.float32(255)
        err = max(err, float(np.abs(out[y : y + 256] - want).max()))
    return "ok" if err <= SLIDING_TOLERANCE else f"output differs from the input by up to {err:.3g}"


def _count(n: int, patch: int, stride: int) -> int:
    """Grid positions along an axis of ``n``, last shifted to the edge (all three tools)."""
    return -(-(n - patch) // stride) + 1


# ---------------------------------------------------------------------------- fcndata


def run_fcndata(workload: str, spec: dict, images, labels, variant: str | None):
    import tensorflow as tf

    import fcndata
    import fcndata.infer
    import fcndata.patches
    import fcndata.sources

    kind = workload.rstrip("0123456789")
    state = {}

    def timed():
        if kind == "sliding":
            import keras

            inp = keras.Input((None, None, 3))
            model = keras.Model(inp, inp)
            predictor = fcndata.infer.SlidingWindowPredictor(
                model, patch_size=spec["patch"], stride=spec["stride"], blend="gaussian",
                batch_size=spec["batch"], pad_to_multiple=1)
            windows = 0
            for i, (image, out) in enumerate(zip(images, predictor.predict_many(images))):
                if i == 0:
                    state["out"] = out
                h, w = image.shape[:2]
                windows += _count(h, spec["patch"], spec["stride"]) * _count(w, spec["patch"], spec["stride"])
            return windows
        ds = fcndata.sources.from_arrays(images, labels, num_classes=NUM_CLASSES).repeat(spec["passes"])
        if kind == "grid":
            ds = fcndata.patches.ExtractPatches(spec["patch"], spec["stride"]).batches(ds, spec["batch"])
        else:
            ds = ds.apply(fcndata.patches.BalancedPatches(
                spec["patch"], num_per_image=spec["per_image"], num_classes=NUM_CLASSES,
                class_probabilities="uniform", seed=0)).batch(spec["batch"])
        ds = ds.prefetch(tf.data.AUTOTUNE)
        items = 0
        for batch in ds:
            if not state:
                state.update({k: batch[k][0].numpy() for k in ("image", "label", "origin", "source_index")})
            items += int(batch["image"].shape[0])
        return items

    start = time.perf_counter()
    items = timed()
    seconds = time.perf_counter() - start
    if kind == "sliding":
        check = check_stitched(state["out"], images[0])
        settings = (f"SlidingWindowPredictor(patch {spec['patch']}, stride {spec['stride']}, gaussian, "
                    f"batch {spec['batch']}).predict_many(uint8 images), identity keras.Model")
    else:
        i = int(state["source_index"])
        check = check_patch(images[i], labels[i], state["origin"], state["image"], state["label"],
                            inside=kind == "balanced")
        stage = (f"ExtractPatches({spec['patch']}, {spec['stride']}).batches({spec['batch']})" if kind == "grid" else
                 f"BalancedPatches({spec['patch']}, {spec['per_image']}/image, uniform) → batch({spec['batch']})")
        given = "aligned arrays, adopted" if variant != "copied" else "numpy's arrays, copied"
        settings = f"from_arrays ({given}) → repeat({spec['passes']}) → {stage} → prefetch(AUTOTUNE)"
    return items, seconds, check, settings


# ---------------------------------------------------------------------------- MONAI


def run_monai(workload: str, spec: dict, images, labels, variant: str | None):
    import torch
    from monai.data import DataLoader, GridPatchDataset, PatchDataset, PatchIter, PatchIterd
    from monai.data.utils import iter_patch
    from monai.inferers import sliding_window_inference
    from monai.transforms import RandCropByLabelClassesd

    kind = workload.rstrip("0123456789")
    patch, stride, batch_size = spec["patch"], spec["stride"], spec["batch"]
    state = {}

    if kind == "sliding":
        def identity(x):
            state["windows"] = state.get("windows", 0) + int(x.shape[0])
            return x

        def timed():
            if variant == "batch":  # one call on [N, 3, H, W]
                x = torch.from_numpy(np.stack(images)).float().div_(255)
                out = sliding_window_inference(x, roi_size=(patch, patch), sw_batch_size=batch_size,
                                               predictor=identity, overlap=0.5, mode="gaussian")
                state["out"] = out[0]
            else:
                for i, image in enumerate(images):
                    x = torch.from_numpy(image).float().div_(255)[None]
                    out = sliding_window_inference(x, roi_size=(patch, patch), sw_batch_size=batch_size,
                                                   predictor=identity, overlap=0.5, mode="gaussian")
                    if i == 0:
                        state["out"] = out[0]
            return state["windows"]

        start = time.perf_counter()
        items = timed()
        seconds = time.perf_counter() - start
        check = check_stitched(state["out"].numpy().transpose(1, 2, 0), images[0].transpose(1, 2, 0))
        how = "one call on the [N, 3, H, W] float batch" if variant == "batch" else "one call per [1, 3, H, W] image"
        settings = (f"sliding_window_inference(roi {patch}, sw_batch_size {batch_size}, overlap 0.5, gaussian), "
                    f"{how}; uint8 → float/255 timed")
        return items, seconds, check, settings

    data = [{"image": im, "label": lab[None], "index": i} for i, (im, lab) in enumerate(zip(images, labels))]

    class OverlapPatchIter(PatchIter):
        """PatchIter with overlap: MONAI 1.6.1's PatchIter passes overlap=0.0 to iter_patch."""

        def __call__(self, array):
            yield from iter_patch(array, patch_size=self.patch_size, start_pos=self.start_pos,
                                  overlap=1 - stride / patch, copy_back=False, mode=self.mode)

    def timed():
        if kind == "grid":
            patch_iter = PatchIterd(keys=["image", "label"], patch_size=(patch, patch), mode=None)
            patch_iter.patch_iter = OverlapPatchIter(patch_size=(patch, patch), mode=None)
            ds = GridPatchDataset(data=data, patch_iter=patch_iter, with_coordinates=False)
        else:
            crop = RandCropByLabelClassesd(keys=["image", "label"], label_key="label", spatial_size=(patch, patch),
                                           num_classes=NUM_CLASSES, ratios=[1] * NUM_CLASSES,
                                           num_samples=spec["per_image"])
            crop.set_random_state(0)
            ds = PatchDataset(data=data, patch_func=crop, samples_per_image=spec["per_image"])
        loader = DataLoader(ds, batch_size=batch_size, num_workers=2, persistent_workers=True)
        items = 0
        for _ in range(spec["passes"]):
            for batch in loader:
                if not state:
                    state["batch"] = batch
                items += int(batch["image"].shape[0])
        return items

    start = time.perf_counter()
    items = timed()
    seconds = time.perf_counter() - start
    b = state["batch"]
    i = int(b["index"][0])
    if kind == "grid":
        coords = np.asarray(b["patch_coords"][0])  # [[c0, c1], [y0, y1], [x0, x1]]
        origin = (coords[1][0], coords[2][0])
        settings = (f"GridPatchDataset + PatchIterd(mode=None, overlap {1 - stride / patch:g} via iter_patch) → "
                    f"DataLoader(batch {batch_size}, 2 workers, persistent), {spec['passes']} epochs")
    else:
        cropped = b["image"].applied_operations[0][-1]["extra_info"]["extra_info"]["cropped"]
        origin = (cropped[0], cropped[2])
        settings = (f"PatchDataset + RandCropByLabelClassesd({patch}, ratios 1:1:1:1, {spec['per_image']}/image) → "
                    f"DataLoader(batch {batch_size}, 2 workers, persistent), {spec['passes']} epochs")
    check = check_patch(images[i].transpose(1, 2, 0), labels[i], origin,
                        np.asarray(b["image"][0]).transpose(1, 2, 0), np.asarray(b["label"][0])[0],
                        inside=kind == "balanced")
    return items, seconds, check, settings


# ---------------------------------------------------------------------------- TorchIO


def run_torchio(workload: str, spec: dict, images, labels, variant: str | None):
    import torch
    import torchio as tio

    kind = workload.rstrip("0123456789")
    patch, stride, batch_size = spec["patch"], spec["stride"], spec["batch"]
    state = {}

    def subject(i, image, label=None, scale=False):
        # 2-D images as [C, H, W, 1] volumes.
        x = torch.from_numpy(image)[..., None]
        if scale:
            x = x.float().div_(255)
        s = {"image": tio.ScalarImage(tensor=x), "index": i}
        if label is not None:
            s["label"] = tio.LabelMap(tensor=torch.from_numpy(label)[None, ..., None])
        return tio.Subject(**s)

    if kind == "sliding":
        def timed():
            windows = 0
            for i, image in enumerate(images):
                sampler = tio.GridSampler(subject(i, image, scale=True), patch_size=(patch, patch, 1),
                                          patch_overlap=(patch - stride, patch - stride, 0))
                aggregator = tio.GridAggregator(sampler, overlap_mode="hann")
                loader = tio.SubjectsLoader(sampler, batch_size=batch_size)
                for batch in loader:
                    out = batch["image"][tio.DATA]  # identity model
                    windows += int(out.shape[0])
                    aggregator.add_batch(out, batch[tio.LOCATION])
                result = aggregator.get_output_tensor()
                if i == 0:
                    state["out"] = result
            return windows

        start = time.perf_counter()
        items = timed()
        seconds = time.perf_counter() - start
        check = check_stitched(state["out"][..., 0].numpy().transpose(1, 2, 0), images[0].transpose(1, 2, 0))
        settings = (f"GridSampler(patch {patch}, overlap {patch - stride}) + GridAggregator(hann: TorchIO has no "
                    f"gaussian) + SubjectsLoader(batch {batch_size}, in-process) per image; uint8 → float/255 timed")
        return items, seconds, check, settings

    def timed():
        subjects = [subject(i, im, lab) for i, (im, lab) in enumerate(zip(images, labels))]
        if kind == "grid":
            ds = torch.utils.data.ConcatDataset([
                tio.GridSampler(s, patch_size=(patch, patch, 1), patch_overlap=(patch - stride, patch - stride, 0))
                for s in subjects])
            loader = tio.SubjectsLoader(ds, batch_size=batch_size, num_workers=2, persistent_workers=True)
        else:
            per = spec["per_image"]
            queue = tio.Queue(tio.SubjectsDataset(subjects), max_length=max(256, per), samples_per_volume=per,
                              sampler=tio.LabelSampler(patch_size=(patch, patch, 1),
                                                       label_probabilities={c: 1 for c in range(NUM_CLASSES)}),
                              num_workers=2, shuffle_subjects=False, shuffle_patches=False)
            loader = tio.SubjectsLoader(queue, batch_size=batch_size, num_workers=0)
        items = 0
        for _ in range(spec["passes"]):
            for batch in loader:
                if not state:
                    state["batch"] = batch
                items += int(batch["image"][tio.DATA].shape[0])
        return items

    torch.manual_seed(0)
    start = time.perf_counter()
    items = timed()
    seconds = time.perf_counter() - start
    b = state["batch"]
    i = int(b["index"][0])
    loc = np.asarray(b[tio.LOCATION][0])  # i0, j0, k0, i1, j1, k1
    check = check_patch(images[i].transpose(1, 2, 0), labels[i], (loc[0], loc[1]),
                        np.asarray(b["image"][tio.DATA][0])[..., 0].transpose(1, 2, 0),
                        np.asarray(b["label"][tio.DATA][0])[0, ..., 0], inside=kind == "balanced")
    if kind == "grid":
        settings = (f"ConcatDataset of GridSampler(patch {patch}, overlap {patch - stride}) per subject → "
                    f"SubjectsLoader(batch {batch_size}, 2 workers, persistent), {spec['passes']} epochs")
    else:
        settings = (f"Queue(LabelSampler {patch}, probabilities 1:1:1:1, {spec['per_image']}/volume, max_length "
                    f"{max(256, spec['per_image'])}, 2 workers, no shuffling) → SubjectsLoader(batch {batch_size}), "
                    f"{spec['passes']} epochs")
    return items, seconds, check, settings


def _aligned_copy(array, aligned_empty):
    copy = aligned_empty(array.shape, array.dtype)
    np.copyto(copy, array)
    return copy


def import_tool(tool: str) -> None:
    """Imports the tool, sets its thread pools and starts its runtime with one tiny op:
    before ``READY``, so neither the import time, nor the runtime's start (TensorFlow
    creates its eager context, devices and thread pools at its first op, ~0.1 s here),
    nor their memory (hundreds of MiB for TensorFlow or torch) is in the measurement.
    A process pays them once, whatever it builds; what is timed is the tool's work."""
    if tool == "fcndata":
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(THREADS)
        import keras  # noqa: F401
        import fcndata.infer  # noqa: F401
        import fcndata.patches  # noqa: F401
        import fcndata.sources  # noqa: F401

        (tf.constant(1.0) + 1.0).numpy()
    else:
        import torch

        torch.set_num_threads(THREADS)
        (torch.ones(1) + 1.0).numpy()
        if tool == "monai":
            import monai.data  # noqa: F401
            import monai.inferers  # noqa: F401
            import monai.transforms  # noqa: F401
        else:
            import torchio  # noqa: F401


RUNNERS = {"fcndata": run_fcndata, "monai": run_monai, "torchio": run_torchio}


def _usage() -> dict:
    """CPU seconds (user, system) and page faults (minor) of this process and its reaped
    children (DataLoader workers are counted once they exit): where a slow run spent its time."""
    import resource

    me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"cpu_user": me.ru_utime + kids.ru_utime, "cpu_sys": me.ru_stime + kids.ru_stime,
            "minor_faults": me.ru_minflt + kids.ru_minflt}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("tool", choices=TOOLS)
    parser.add_argument("workload", choices=WORKLOADS)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (4 images of 256², a 1024² big image, 1 pass)")
    parser.add_argument("--scale", type=int, default=1, help="times the patches asked for, same data (grid, balanced)")
    parser.add_argument("--variant", default=None, help="monai sliding windows: 'image' (one call per image) or 'batch'")
    args = parser.parse_args(argv)
    spec = workload_spec(args.workload, args.quick, args.scale)
    images, labels = make_data(spec["data"], args.quick)
    if args.tool != "fcndata":  # the layout torch tools want, built before the baseline
        images = [np.ascontiguousarray(im.transpose(2, 0, 1)) for im in images]
    import_tool(args.tool)
    if args.tool == "fcndata" and args.variant != "copied":
        # The layout TensorFlow reads without a copy: one 64-byte-aligned stack per set.
        from fcndata.common import aligned_empty

        images, labels = (np.stack(a) if len(a) > 1 else a[0][None] for a in (images, labels))
        images, labels = [_aligned_copy(a, aligned_empty) for a in (images, labels)]
    # Touch and free about the row's peak memory right before the timer: on this VM the first
    # touch of memory the guest has not used lately costs ~50x a later one (0.68 s vs 0.01 s
    # for 64 MiB, seen here), which would otherwise decide the rows that allocate most.
    warm = np.ones((WARM_GIB.get(args.workload, 1) << 30) >> (6 if args.quick else 0), np.uint8)
    del warm
    print("READY", flush=True)
    sys.stdin.readline()
    row = {"tool": args.tool, "workload": args.workload}
    try:
        before = _usage()
        items, seconds, check, settings = RUNNERS[args.tool](args.workload, spec, images, labels, args.variant)
        row.update(items=items, seconds=round(seconds, 3), rate=round(items / seconds, 1), check=check, settings=settings)
        row.update({k: round(v - before[k], 3) for k, v in _usage().items()})
    except Exception as e:  # a tool's failure is a row of the table, not a crash of the run
        row.update(items=0, seconds=None, rate=None, check=f"error: {type(e).__name__}: {e}"[:300], settings="")
    print(json.dumps(row), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
