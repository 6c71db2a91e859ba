"""How long the test suite takes, measured the way CI runs it: a fresh clone of this checkout's HEAD,
``bash .ci/run`` in it (README's setup command, then README's test command), then the fast loop
(``python -m pytest -q -m "not slow"``) in the same clone.

Targets: the whole suite within 15 min on 2 cores, the fast loop within 2 min. Each run's slowest
tests (pytest's ``--durations``) are kept, to show where to trim.

Usage::

    python benchmarks/suite_time.py [--out benchmarks/results/suite_time.json] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGETS_S = {"suite": 15 * 60, "fast": 2 * 60}


def parse_pytest(output: str) -> dict:
    """Counts, pytest's own time and the slowest tests from ``pytest -q --durations=N`` output."""
    summary = [line for line in output.splitlines() if re.search(r"\d+ (passed|failed|errors?)\b.* in [\d.]+s", line)]
    if not summary:
        raise ValueError("no pytest summary line in the output")
    last = summary[-1]
    counts = {("error" if kind.startswith("error") else kind): int(n)
              for n, kind in re.findall(r"(\d+) (passed|failed|skipped|errors?|xfailed|xpassed)", last)}
    slowest = [{"seconds": float(s), "phase": phase, "test": test}
               for s, phase, test in re.findall(r"^([\d.]+)s (call|setup|teardown)\s+(\S+)$", output, re.M)]
    return {"counts": counts, "pytest_s": float(re.search(r" in ([\d.]+)s", last).group(1)), "slowest": slowest[:10]}


def run(cmd: list[str], cwd: Path, marker: str | None = None) -> tuple[str, float, float | None]:
    """Run ``cmd``, echoing its output; returns the output, the wall time and the time at which a
    line starting with ``marker`` appeared (None if it did not)."""
    t0, at = time.perf_counter(), None
    proc = subprocess.Popen(cmd, cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        sys.stdout.write(line)
        lines.append(line)
        if marker and at is None and line.startswith(marker):
            at = time.perf_counter() - t0
    proc.wait()
    output = "".join(lines)
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed (exit {proc.returncode}): the times of a red run are not a measure")
    return output, time.perf_counter() - t0, at


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "suite_time.json"))
    ap.add_argument("--keep", default=None, help="clone into this folder and keep it (default: a temporary one)")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="cast-suite-"))
    clone = work / "clone"
    shutil.rmtree(clone, ignore_errors=True)
    commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, check=True).stdout.strip()
    try:
        subprocess.run(["git", "clone", "-q", str(ROOT), str(clone)], check=True)
        ci_out, ci_s, tests_at = run(["bash", ".ci/run"], clone, marker="== tests")
        fast_out, fast_s, _ = run([sys.executable, "-m", "pytest", "-q", "-m", "not slow"], clone)
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if tests_at is None:
        raise SystemExit(".ci/run printed no '== tests' line: cannot tell its setup from its tests")
    suite, fast = parse_pytest(ci_out), parse_pytest(fast_out)
    suite.update(wall_s=round(ci_s - tests_at, 1), setup_s=round(tests_at, 1), ci_run_s=round(ci_s, 1))
    fast.update(wall_s=round(fast_s, 1))
    result = {
        "machine": f"{platform.machine()}, {os.cpu_count()} cores", "python": platform.python_version(), "commit": commit,
        "how": "fresh clone of HEAD: bash .ci/run (setup, then python -m pytest -q), then python -m pytest -q -m 'not slow'",
        "suite": suite, "fast": fast,
        "targets_s": TARGETS_S,
        "met": {"suite": suite["pytest_s"] <= TARGETS_S["suite"], "fast": fast["pytest_s"] <= TARGETS_S["fast"]},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    for key in ("suite", "fast"):
        r = result[key]
        print(f"{key}: {r['counts']} in {r['pytest_s'] / 60:.1f} min (target {TARGETS_S[key] / 60:.0f} min: "
              f"{'met' if result['met'][key] else 'NOT met'})")
    print(f"setup in the fresh clone: {suite['setup_s']:.0f} s; whole CI run {suite['ci_run_s'] / 60:.1f} min -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
