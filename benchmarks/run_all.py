"""`make bench`: every benchmark in one go, written to benchmarks/RESULTS.md.

    python benchmarks/run_all.py                 # all of them (about 15 minutes on 2 cores)
    python benchmarks/run_all.py batching augment
    python benchmarks/run_all.py --quick         # smaller sizes; writes benchmarks/RESULTS-quick.md

Each benchmark runs in its own process (``--child NAME``), one at a time, so its peak
resident memory (``ru_maxrss`` of that process) is its own and one benchmark's thread or
TensorFlow settings cannot leak into the next. Its output is streamed here as it runs,
behind a progress line. Results reach this runner through a small interface, in this
order of preference:

* ``run(quick) -> list of tables`` (a table is ``{"title", "columns", "rows", "notes"}``);
* ``main(quick)`` returning a dict — a dict of dicts becomes one table, a row per key;
* whatever ``main`` prints, kept verbatim in RESULTS.md.

Every benchmark reports ratios against references measured in the same run; absolute
rates are only comparable within one run on one machine (RESULTS.md says which, and its
load average).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import io
import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
BENCHMARKS = ["patches", "batching", "input_bound", "augment", "pipeline", "masking", "service"]
MARK = "RUN_ALL_RESULT "
MIB = 2**20


# ---------------------------------------------------------------------------- in the child


def tables_from_return(value, name: str) -> list[dict]:
    """Tables from what a benchmark's ``main`` returned: a dict of dicts is one table (a row
    per key, a column per inner key), a dict of numbers a two-column table; else none."""
    if not isinstance(value, dict) or not value:
        return []
    if all(isinstance(v, dict) for v in value.values()):
        columns = []
        for v in value.values():
            columns += [k for k in v if k not in columns]
        rows = [[str(k), *(_plain(v.get(c)) for c in columns)] for k, v in value.items()]
        return [{"title": f"{name}: returned numbers", "columns": [name, *columns], "rows": rows, "notes": []}]
    return [{"title": f"{name}: returned numbers", "columns": ["quantity", "value"],
             "rows": [[str(k), _plain(v)] for k, v in value.items()], "notes": []}]


def _plain(v):
    if isinstance(v, (int, float, str)) or v is None:
        return v
    if hasattr(v, "item"):  # numpy scalars
        return v.item()
    return json.dumps(v, default=str)


class _Tee(io.TextIOBase):
    """Writes to the real stdout (streamed to the runner) and keeps a copy."""

    def __init__(self, stream):
        self.stream, self.copy = stream, io.StringIO()

    def write(self, text):
        self.stream.write(text)
        self.stream.flush()
        return self.copy.write(text)

    def flush(self):
        self.stream.flush()


def child(name: str, quick: bool) -> None:
    """Runs one benchmark in this process and prints its tables as one JSON line."""
    sys.path.insert(0, str(ROOT))
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    tee = _Tee(sys.stdout)
    with contextlib.redirect_stdout(tee):
        spec.loader.exec_module(module)
        if hasattr(module, "run"):
            tables = module.run(quick)
        elif name == "pipeline":  # main(argv): epoch counts
            module.main(["10", "200"] if quick else [])
            tables = []
        else:
            tables = tables_from_return(module.main(quick=quick), name)
    print(MARK + json.dumps({"tables": tables, "output": tee.copy.getvalue()}, default=_plain), flush=True)


# ---------------------------------------------------------------------------- in the runner


def run_one(name: str, quick: bool) -> dict:
    """Runs ``name`` in a child process; returns its record (tables, output, seconds, peak RSS)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name] + (["--quick"] if quick else [])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT)
    payload, tail = None, []
    for line in proc.stdout:
        if line.startswith(MARK):
            payload = json.loads(line[len(MARK):])
            continue
        sys.stdout.write("    " + line)
        sys.stdout.flush()
        tail = (tail + [line.rstrip()])[-30:]
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    record = {
        "name": name,
        "seconds": time.perf_counter() - start,
        "peak_rss_mib": usage.ru_maxrss * 1024 / MIB,  # Linux: kilobytes
        "status": "ok" if proc.returncode == 0 and payload is not None else f"failed (exit {proc.returncode})",
        "tables": (payload or {}).get("tables", []),
        "output": (payload or {}).get("output") or "\n".join(tail),
    }
    return record


def _cell(v) -> str:
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return "" if v is None else str(v)
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        if abs(v) >= 100:
            return f"{v:.0f}"
        if abs(v) >= 0.01 or v == 0:
            return f"{v:.2f}"
        return f"{v:.3g}"
    return str(v)


def render_table(table: dict) -> list[str]:
    lines = [f"### {table['title']}", "", "| " + " | ".join(table["columns"]) + " |",
             "|" + "---|" * len(table["columns"])]
    lines += ["| " + " | ".join(_cell(c) for c in row) + " |" for row in table["rows"]]
    lines += [""] + [f"- {n}" for n in table.get("notes", [])]
    return lines + [""]


def render(records: list[dict], *, command: str, machine_start: dict, machine_end: dict | None = None) -> str:
    """The RESULTS.md text: machine, command, one summary row per benchmark, then its tables."""
    sys.path.insert(0, str(ROOT))
    from fcndata.experiments.report import machine_lines

    lines = ["# Benchmarks", "", f"Written by `{command}`; each benchmark ran in its own process, one at a time.",
             ("Absolute rates depend on the machine and its load: compare the ratios, each measured against a "
              "reference in the same run."), "", *machine_lines(machine_start, machine_end), "",
             "| benchmark | status | seconds | peak RSS MiB |", "|---|---|---|---|"]
    lines += [f"| {r['name']} | {r['status']} | {r['seconds']:.0f} | {r['peak_rss_mib']:.0f} |" for r in records]
    lines.append("")
    for r in records:
        lines += [f"## {r['name']}", "", (f"`python benchmarks/{r['name']}.py` — {r['status']}, {r['seconds']:.0f} s, "
                  f"peak resident memory {r['peak_rss_mib']:.0f} MiB (the whole process, TensorFlow included)."), ""]
        for table in r["tables"]:
            lines += render_table(table)
        if r["output"].strip():
            lines += ["<details><summary>printed output</summary>", "", "```", r["output"].rstrip(), "```", "",
                      "</details>", ""]
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("--out", help="RESULTS file (default benchmarks/RESULTS.md, --quick: benchmarks/RESULTS-quick.md)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("names", nargs="*", default=BENCHMARKS, help=f"subset of {BENCHMARKS}")
    args = parser.parse_args(argv)
    if args.child:
        child(args.child, args.quick)
        return 0
    unknown = [n for n in args.names if n not in BENCHMARKS]
    if unknown:
        parser.error(f"unknown benchmark(s) {unknown}; choose from {BENCHMARKS}")
    sys.path.insert(0, str(ROOT))
    from fcndata.experiments.report import machine_facts

    command = shlex.join(["python", "benchmarks/run_all.py", *(sys.argv[1:] if argv is None else argv)])
    start = machine_facts()
    records = []
    for i, name in enumerate(args.names, 1):
        print(f"[{i}/{len(args.names)}] benchmarks/{name}.py ...", flush=True)
        records.append(run_one(name, args.quick))
        r = records[-1]
        print(f"[{i}/{len(args.names)}] benchmarks/{name}.py: {r['status']}, {r['seconds']:.0f} s, "
              f"peak {r['peak_rss_mib']:.0f} MiB", flush=True)
    out = Path(args.out or HERE / ("RESULTS-quick.md" if args.quick else "RESULTS.md"))
    out.write_text(render(records, command=command, machine_start=start, machine_end=machine_facts()))
    print(f"wrote {out}")
    return 0 if all(r["status"] == "ok" for r in records) else 1


if __name__ == "__main__":
    sys.exit(main())
