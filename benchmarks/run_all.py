"""`make bench`: every benchmark in one go. Each prints its numbers as ratios against a
baseline measured in the same run (never absolute timings compared across machines)."""

import argparse
import importlib.util
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
BENCHMARKS = ["patches", "batching", "augment", "masking", "service"]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--quick", action="store_true", help="smaller sizes, for a smoke run")
    parser.add_argument("names", nargs="*", default=BENCHMARKS, help=f"subset of {BENCHMARKS}")
    args = parser.parse_args(argv)
    for name in args.names:
        print(f"\n=== benchmarks/{name}.py ===", flush=True)
        spec = importlib.util.spec_from_file_location(f"bench_{name}", HERE / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        module.main(quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
