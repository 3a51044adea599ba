"""``make bench``: run the benchmarks in one process, write results/latest.json, print a table.

python -m benchmarks.run                    # every section
python -m benchmarks.run --only data_checks # some sections
"""

from __future__ import annotations

import argparse
import datetime as dt
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

from benchmarks.harness import machine, markdown_table

SECTIONS = [
    "training",
    "data_checks",
    "monitor",
    "localcloud",
    "sqs",
    "inference",
    "load",
    "parse",
    "pipeline",
    "events",
    "demo",
]
RESULTS = Path(__file__).parent / "results"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", default=",".join(SECTIONS), help=f"comma-separated subset of {SECTIONS}")
    parser.add_argument("--out", type=Path, default=RESULTS / "latest.json")
    args = parser.parse_args(argv)
    chosen = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(chosen) - set(SECTIONS))
    if unknown:
        parser.error(f"unknown section(s) {unknown}; choose from {SECTIONS}")

    started = time.monotonic()
    figures, errors = [], {}
    for section in chosen:
        print(f"== {section}", file=sys.stderr, flush=True)
        try:
            figures += importlib.import_module(f"benchmarks.bench_{section}").run()
        except Exception:  # one broken section must not hide the others' figures
            errors[section] = traceback.format_exc()
            print(errors[section], file=sys.stderr)

    report = {
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "duration_s": round(time.monotonic() - started, 1),
        "figures": [f.to_json() for f in figures],
        "errors": errors,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    info = report["machine"]
    print(f"\n{report['date']} · {info['cpu_model']} · {info['cores']} cores · {report['duration_s']} s\n")
    print(markdown_table(figures))
    print(f"\nwrote {args.out}")
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
