"""`make bench-peers`: fcndata next to MONAI and TorchIO on the same patch workloads.

    python benchmarks/peers.py --peers-python .venv-peers/bin/python        # writes benchmarks/PEERS.md
    python benchmarks/peers.py --quick --tools fcndata --out /tmp/PEERS.md  # seconds; no torch needed

Every (workload, tool) pair runs in a fresh process (``benchmarks/peer_workloads.py``):
fcndata with this interpreter, MONAI and TorchIO with ``--peers-python`` (their own venv,
``.venv-peers``, so torch never enters the project's dependencies). Within a workload the
tools run round-robin (monai, torchio, fcndata), so a drifting machine load touches all
three alike.

Memory: the worker builds its data, prints ``READY`` and waits; the baseline is read then.
While it runs, the summed PSS (``/proc/PID/smaps_rollup``; RSS where that is missing) of
the worker and all its descendants (DataLoader workers count, shared pages once) is
sampled every ~20 ms (longer for large processes, whose samples cost milliseconds: the
sampler keeps under ~10 % of one core); peak memory = highest sample − baseline. Sampling
can miss a spike shorter than the interval.
"""

from __future__ import annotations

import argparse
import statistics
import datetime
import json
import os
import platform
import queue
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORKER = HERE / "peer_workloads.py"
sys.path.insert(0, str(HERE))
from peer_workloads import THREADS, TOOLS, WORKLOADS  # noqa: E402  (numpy only)

MIB = 2**20
SAMPLE_SECONDS = 0.02
#: Variants of one (tool, workload) run as separate rows' candidates; the faster is the row.
VARIANTS = {
    ("monai", "sliding512"): ["image", "batch"],
    # fcndata adopts 64-byte-aligned arrays without a copy and copies numpy's own (+256 MiB here)
    ("fcndata", "grid8192"): ["aligned", "copied"],
    ("fcndata", "balanced8192"): ["aligned", "copied"],
}
COLUMNS = ["workload", "tool", "rate (items/s, median)", "runs", "peak memory over baseline (MiB, largest)", "rate / MONAI",
           "memory / MONAI", "check", "settings"]
MISSING_PEERS = ("MONAI and TorchIO rows skipped: no peers interpreter ({why}); `make bench-peers` creates "
                 ".venv-peers with torch, monai and torchio and passes --peers-python .venv-peers/bin/python")


# ---------------------------------------------------------------------------- memory


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])  # the name may hold spaces or ')'
        kids.setdefault(ppid, []).append(int(entry.name))
    return kids


def process_tree(pid: int) -> list[int]:
    """``pid`` and all its descendants."""
    kids, out, todo = _children_map(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, []))
    return out


def process_memory(pid: int) -> int:
    """PSS of one process in bytes (RSS where smaps_rollup is missing); 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        with open(f"/proc/{pid}/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return 0


def tree_memory(pid: int) -> int:
    """Summed PSS of ``pid`` and its descendants, in bytes."""
    return sum(process_memory(p) for p in process_tree(pid))


# ---------------------------------------------------------------------------- one worker


def run_worker(cmd: list[str], env: dict, timeout: float) -> dict:
    """Runs one worker: READY, baseline, go, samples until it exits. Returns its JSON row
    plus ``peak_mib`` (or a row whose ``check`` says what went wrong)."""
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=err, text=True, env=env,
                                cwd=ROOT)
        lines: queue.Queue = queue.Queue()
        threading.Thread(target=lambda: [lines.put(line) for line in proc.stdout] + [lines.put(None)], daemon=True).start()
        deadline = time.monotonic() + timeout
        out, ready, baseline, peak = [], False, 0, 0
        try:
            while not ready:  # data building is not timed, but bounded by the same timeout
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
                if line is None:
                    break
                ready = line.strip() == "READY"
            if ready:
                baseline = peak = tree_memory(proc.pid)
                deadline = time.monotonic() + timeout  # the timeout counts from the start of the work
                proc.stdin.write("go\n")
                proc.stdin.flush()
                tree, n = process_tree(proc.pid), 0
                while proc.poll() is None:
                    # Reading smaps_rollup walks the page tables: for a process of several
                    # GiB a sample costs milliseconds, so the pause grows with it and the
                    # sampler stays under ~10 % of one core (2 cores: it competes with the
                    # worker). The tree is rescanned every 10th sample.
                    n += 1
                    if n % 10 == 0:
                        tree = process_tree(proc.pid)
                    t = time.monotonic()
                    peak = max(peak, sum(process_memory(p) for p in tree))
                    if t > deadline:
                        raise TimeoutError
                    time.sleep(max(SAMPLE_SECONDS, 9 * (time.monotonic() - t)))
            proc.wait(timeout=30)
        except (TimeoutError, queue.Empty, subprocess.TimeoutExpired):
            for p in reversed(process_tree(proc.pid)):  # this worker's own tree only
                try:
                    os.kill(p, 9)
                except OSError:
                    pass
            proc.wait()
            return {"check": f"timeout ({timeout:.0f} s)", "rate": None, "peak_mib": None, "settings": ""}
        while True:
            line = lines.get()
            if line is None:
                break
            out.append(line)
        rows = [json.loads(line) for line in out if line.startswith("{")]
        if not rows:
            err.seek(0)
            tail = " | ".join(err.read().strip().splitlines()[-3:])
            return {"check": f"worker failed (exit {proc.returncode}): {tail}"[:300], "rate": None, "peak_mib": None,
                    "settings": ""}
        row = rows[-1]
        row["peak_mib"] = (peak - baseline) / MIB
        row["baseline_mib"] = baseline / MIB
        return row


# ---------------------------------------------------------------------------- versions and machine


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _versions(python: str, packages: list[str]) -> dict:
    code = ("import importlib.metadata as m, json, platform; v = {'python': platform.python_version()}\n"
            f"for p in {packages!r}:\n"
            "    try: v[p] = m.version(p)\n"
            "    except m.PackageNotFoundError: pass\n"
            "print(json.dumps(v))")
    try:
        return json.loads(subprocess.run([python, "-c", code], capture_output=True, text=True, timeout=60).stdout)
    except (OSError, ValueError, subprocess.TimeoutExpired):
        return {}


def _load() -> str:
    return " ".join(open("/proc/loadavg").read().split()[:3]) if os.path.exists("/proc/loadavg") else "?"


# ---------------------------------------------------------------------------- the report


def _fmt(v, digits=0):
    return "—" if v is None else f"{v:,.{digits}f}"


def _ratio(a, b):
    return "—" if a is None or b is None or b <= 0 else f"{a / b:.2f}×"


def _command(given: list[str]) -> str:
    """The command a PEERS file names as its writer: ``make bench-peers`` passes only where
    the peers' Python is; any other choice (workloads, tools, rounds, sizes) names itself.

    >>> _command(["--peers-python", ".venv-peers/bin/python"])
    'make bench-peers'
    >>> _command(["--only", "sliding8192", "--peers-python=p"])
    'python benchmarks/peers.py --only sliding8192 --peers-python=p'
    """
    chosen = [a for i, a in enumerate(given) if a != "--peers-python" and not a.startswith("--peers-python=")
              and (i == 0 or given[i - 1] != "--peers-python")]
    return "make bench-peers" if not chosen else "python benchmarks/peers.py " + " ".join(shlex.quote(a) for a in given)


def _usage_text(row: dict) -> str:
    """``"0.61 + 0.12 s CPU, 5,310 faults"`` from a worker row (``"no usage"`` without one)."""
    if row.get("cpu_user") is None:
        return "no usage"
    return f"{row['cpu_user']:.2f} + {row['cpu_sys']:.2f} s CPU, {row['minor_faults']:,.0f} faults"


def _median_row(runs: list[dict]) -> dict:
    """One row from repeated runs: the median rate, the largest peak memory, every run's
    rate listed; a failed check in any run is the row's check."""
    row = dict(runs[0])
    rates = [r.get("rate") for r in runs]
    bad = [r["check"] for r in runs if r.get("check") != "ok"]
    if bad or None in rates:
        row["check"] = bad[0] if bad else "no rate"
        return row
    row["rate"] = float(statistics.median(rates))
    peaks = [r.get("peak_mib") for r in runs if r.get("peak_mib") is not None]
    row["peak_mib"] = max(peaks) if peaks else None
    row["runs"] = ", ".join(_fmt(v) for v in rates)
    return row


def render(rows: list[dict], header: list[str], notes: list[str]) -> str:
    lines = header + ["", "| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for r in rows:
        monai = next((m for m in rows if m["workload"] == r["workload"] and m["tool"] == "monai"), None)
        ok = lambda x: x is not None and x.get("check") == "ok"  # noqa: E731  ratios only between checked rows
        rate_ratio = _ratio(r.get("rate"), monai.get("rate")) if ok(monai) and ok(r) else "—"
        mem_ratio = (_ratio(max(r["peak_mib"], 0.1), max(monai["peak_mib"], 0.1))
                     if ok(monai) and ok(r) and r.get("peak_mib") is not None and monai.get("peak_mib") is not None
                     else "—")
        check = str(r.get("check", "")).replace("|", "/")
        cells = [r["workload"], r["tool"], _fmt(r.get("rate")), r.get("runs", ""), _fmt(r.get("peak_mib")), rate_ratio,
                 mem_ratio, check, str(r.get("settings", "")).replace("|", "/")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines + [""] + notes) + "\n"


HOW = """\
## How each tool was used

Each tool gets the same arrays (numpy seed 0) in the layout it takes: channel-last
[H, W, 3] uint8 for fcndata, channel-first [3, H, W] uint8 for MONAI, [3, H, W, 1] for
TorchIO (2-D images as one-slice volumes); building those arrays is not timed, nor is
importing the tool and starting its runtime with one tiny op (TensorFlow creates its eager
context and thread pools at its first op, ~0.1 s; torch at import). The timer
starts before the tool's dataset, loader or predictor is built and stops after the last
batch (or stitched image); a rate is patches (grid, balanced) or windows (sliding) per
second. Every process has 2 threads (OMP/MKL_NUM_THREADS=2, `torch.set_num_threads(2)`,
TensorFlow intra/inter op pools of 2); MONAI and TorchIO load with 2 DataLoader worker
processes (persistent across passes), fcndata with tf.data's own threads (and the
predictor's 2 worker threads). fcndata's arrays are one 64-byte-aligned stack per set
(`fcndata.common.aligned_empty`), which `from_arrays` adopts without a copy, as the torch
tools read their arrays in place; the `copied` variant (first round, 8192² rows) gives it
numpy's own arrays, which it copies once (+256 MiB).

- **grid**: MONAI `GridPatchDataset` + `PatchIterd` (MONAI 1.6.1's `PatchIter` always
  passes `overlap=0.0`, so the benchmark's iterator calls `monai.data.utils.iter_patch`
  with overlap 0.5, `mode=None`: no padding) + `monai.data.DataLoader`; its workers split
  the images, so the single big image runs in one worker. TorchIO one `GridSampler` per
  subject, concatenated (`torch.utils.data.ConcatDataset`) and loaded by
  `tio.SubjectsLoader` (TorchIO's DataLoader with its collate). fcndata
  `from_arrays → repeat → ExtractPatches(...).batches(ds, batch) → prefetch` (the grid
  cut in chunks, one gather per plane, rebatched; no per-patch elements).
- **balanced**: MONAI `PatchDataset` around `RandCropByLabelClassesd` (ratios 1:1:1:1),
  so batches hold exactly 64 (16) patches. TorchIO `tio.Queue` with `LabelSampler`
  (probabilities 1:1:1:1), patch shuffling off. fcndata `BalancedPatches(uniform)` →
  `batch`: per-tile class counts, then one tile of pixels per patch.
- **sliding**: identity model, output = input / 255 as float32 (the uint8 → float
  conversion is inside the timer for every tool). MONAI `sliding_window_inference`
  (gaussian), both one call per image and one call on the stacked batch tried on 512²
  images; the faster is the row. TorchIO `GridSampler` + `GridAggregator(overlap_mode="hann")`:
  TorchIO has no gaussian blend. fcndata `SlidingWindowPredictor(blend="gaussian")
  .predict_many(uint8 images)`: numpy cut and blend, the model on windows it reads in
  place, images (512²) or jobs (8192²) on 2 threads.

Checks: the first patch a tool yields equals the numpy slice of the source at the
location the tool reports (MONAI's patch coordinates or crop record, TorchIO's
`location`, fcndata's `origin`), image and label; balanced patches must also lie inside
the image; a stitched identity prediction must equal the input / 255 within 1e-5.
"""


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", default=",".join(WORKLOADS), help="comma list of workloads")
    parser.add_argument("--tools", default=",".join(TOOLS), help="comma list of tools")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: seconds per row")
    parser.add_argument("--scale", type=int, default=1,
                        help="times the patches asked for (passes; balanced 8192² patch count), same data: a tool's "
                             "fixed cost against its cost per patch (grid and balanced workloads only)")
    parser.add_argument("--out", default=None, help="default benchmarks/PEERS.md (PEERS-quick.md with --quick)")
    parser.add_argument("--peers-python", default=None, help="python of the venv holding torch, monai and torchio")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds per worker")
    parser.add_argument("--rounds", type=int, default=None,
                        help="rounds over the workloads (MONAI and fcndata every round, TorchIO and fcndata's "
                             "'copied' variant in the first); rows report the median rate. Default 5, 1 with --quick")
    args = parser.parse_args(argv)
    args.rounds = args.rounds or (1 if args.quick else 5)
    workloads = [w for w in args.only.split(",") if w]
    tools = [t for t in args.tools.split(",") if t]
    bad = [w for w in workloads if w not in WORKLOADS] + [t for t in tools if t not in TOOLS]
    if bad:
        parser.error(f"unknown workload or tool {bad}; workloads: {', '.join(WORKLOADS)}; tools: {', '.join(TOOLS)}")
    if args.scale < 1 or (args.scale != 1 and any(w.startswith("sliding") for w in workloads)):
        parser.error(f"--scale {args.scale}: a positive number of times the patches, for grid and balanced workloads "
                     "only (sliding windows predict each image once); choose them with --only")
    out = Path(args.out) if args.out else HERE / ("PEERS-quick.md" if args.quick else "PEERS.md")
    notes = []
    peers = [t for t in tools if t != "fcndata"]
    if peers and (not args.peers_python or not Path(args.peers_python).exists()):
        why = "--peers-python not given" if not args.peers_python else f"{args.peers_python} does not exist"
        message = MISSING_PEERS.format(why=why)
        print(message, file=sys.stderr)
        notes.append(f"Note: {message}.")
        tools = [t for t in tools if t == "fcndata"]

    started, load_before, t0 = datetime.datetime.now().astimezone(), _load(), time.monotonic()
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    runs: dict[tuple, list[dict]] = {}
    for round_ in range(args.rounds):
        for workload in workloads:
            for tool in [t for t in TOOLS if t in tools]:
                if round_ and tool == "torchio":
                    continue  # far from the others either way; its rows are slow
                python = sys.executable if tool == "fcndata" else args.peers_python
                variants = VARIANTS.get((tool, workload), [None])
                if round_ and tool == "fcndata":
                    variants = variants[:1]  # "copied" shows the cost of the copy once
                for variant in variants:
                    cmd = [python, str(WORKER), tool, workload] + (["--quick"] if args.quick else [])
                    cmd += ["--scale", str(args.scale)] if args.scale != 1 else []
                    cmd += ["--variant", variant] if variant else []
                    print(f"[{time.monotonic() - t0:6.0f} s] round {round_ + 1} {workload} {tool}"
                          f"{' ' + variant if variant else ''} ...", end=" ", flush=True)
                    row = dict(run_worker(cmd, env, args.timeout), workload=workload, tool=tool, variant=variant)
                    print(f"{_fmt(row.get('rate'))} items/s, {_fmt(row.get('peak_mib'))} MiB, {_usage_text(row)}, "
                          f"{row.get('check')}", flush=True)
                    runs.setdefault((workload, tool, variant), []).append(row)
    rows = []
    for workload in workloads:
        for tool in [t for t in TOOLS if t in tools]:
            candidates = [_median_row(runs[k]) for k in runs if k[:2] == (workload, tool)]
            if not candidates:
                continue
            best = max(candidates, key=lambda r: r.get("rate") or -1)
            if len(candidates) > 1:
                others = "; ".join(f"{r['variant']}: {_fmt(r.get('rate'))} items/s, {_fmt(r.get('peak_mib'))} MiB"
                                   for r in candidates)
                notes.append(f"- {workload}, {tool}: variants tried ({others}); the row is `{best['variant']}`.")
            rows.append(best)
    seconds = time.monotonic() - t0

    fc = _versions(sys.executable, ["tensorflow", "tensorflow-cpu", "keras", "numpy"])
    pv = _versions(args.peers_python, ["torch", "monai", "torchio", "numpy"]) if set(tools) - {"fcndata"} else {}
    tf_version = fc.get("tensorflow") or fc.get("tensorflow-cpu") or "?"
    command = _command(argv if argv is not None else sys.argv[1:])
    header = [
        "# fcndata next to MONAI and TorchIO",
        "",
        f"Written by `{command}` (benchmarks/peers.py) on {started:%Y-%m-%d %H:%M %Z}, "
        f"{seconds / 60:.1f} minutes for the rows{' (--quick: tiny sizes)' if args.quick else ''}"
        f"{f' (--scale {args.scale}: {args.scale}x the patches of make bench-peers, same data)' if args.scale != 1 else ''}.",
        "",
        f"- machine: {_cpu_model()}, {os.cpu_count()} cores, load average {load_before} before the rows, "
        f"{_load()} after",
        f"- fcndata side: Python {fc.get('python', '?')}, TensorFlow {tf_version}, Keras {fc.get('keras', '?')}, "
        f"numpy {fc.get('numpy', '?')}",
        (f"- peers side: Python {pv.get('python', '?')}, torch {pv.get('torch', '?')}, MONAI {pv.get('monai', '?')}, "
         f"TorchIO {pv.get('torchio', '?')}, numpy {pv.get('numpy', '?')}" if pv else "- peers side: not run"),
        f"- threads: {THREADS} per process (OMP/MKL_NUM_THREADS, torch.set_num_threads, TensorFlow intra/inter op); "
        f"one worker process at a time, tools round-robin within each workload, {args.rounds} rounds over the "
        "workloads: a row is the median rate of its runs (all listed) and the largest peak memory; TorchIO and "
        "fcndata's `copied` variant run in the first round only",
        "- rate: patches or windows per second, construction included; memory: peak summed PSS of the worker and "
        "its child processes over its baseline after building the data, sampled every 20 ms or more (the "
        "sampler stays under ~10 % of one core)",
        "- each worker touches and frees about its row's peak memory (1 GiB; 2 GiB for balanced8192, 3 GiB for sliding8192; the same for every tool of a workload) before its "
        "baseline: on this VM the first touch of memory the guest has not used lately is ~50x dearer than a later one "
        "(0.68 s vs 0.01 s for 64 MiB), and would otherwise decide the rows that allocate most",
        "",
        "Absolute numbers hold for this machine and run only; compare within a workload.",
    ]
    per_run = ["", "Where each run's time went (the worker process and its exited children: rate; CPU seconds user + "
               "system; minor page faults, a 2 MiB huge page counting once):", ""]
    per_run += [f"- {w} · {t}{' ' + v if v else ''}: " + "; ".join(f"{_fmt(r.get('rate'))} ({_usage_text(r)})" for r in rs)
                for (w, t, v), rs in runs.items()]
    notes = (["", "Notes:", ""] + notes if notes else []) + per_run + ["", HOW]
    out.write_text(render(rows, header, notes))
    print(f"wrote {out} ({seconds:.0f} s)")
    return 0 if all(r.get("check") == "ok" for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
