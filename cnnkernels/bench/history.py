"""The benchmark history: each ``cnnkernels bench`` run appends one JSON line
(its header and its timed rows, reduced to the fields a comparison needs) to
``<results dir>/<device slug>.jsonl``; ``--compare`` reads the last line
before appending and sets each row against the same row of that run.

A change counts as a regression when ours got slower by more than both
runs' measured spreads allow: the new median minus its spread is above the
old median plus its spread (the spread is half the interquartile range of
the timed runs, driver.Timing), and by at least MIN_CHANGE.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from cnnkernels.bench import report

# The key of a row: what must match for two runs' rows to be the same measurement.
KEY_FIELDS = ("op", "group", "name", "shape", "batch", "dtype", "tf32", "layout", "direction",
              "backend", "algorithm")
# The fields a history line keeps of a row.
KEPT_FIELDS = (*KEY_FIELDS, "status", "ours_ms", "ours_spread", "torch_ms", "speedup",
               "roofline_fraction")
# A change smaller than this is noise whatever the spreads say.
MIN_CHANGE = 0.05


def slug(name: str) -> str:
    """A file name for a device: ``Intel(R) Xeon(R) Gold 6338`` -> ``intel-r-xeon-r-gold-6338``."""
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def history_path(results_dir: Path, device: str) -> Path:
    return Path(results_dir) / f"{slug(device)}.jsonl"


def _key(row: dict) -> tuple:
    return tuple(row.get(field) for field in KEY_FIELDS)


def append(results_dir: Path, header: dict, rows: list[dict]) -> Path:
    """Append this run (its timed rows) to the device's history file: one
    line written with a single O_APPEND write, so runs that finish at once
    do not interleave."""
    path = history_path(results_dir, header["device"])
    path.parent.mkdir(parents=True, exist_ok=True)
    kept = [{field: row.get(field) for field in KEPT_FIELDS} for row in rows
            if row.get("ours_ms") is not None]
    line = json.dumps({"header": header, "rows": kept}, separators=(",", ":")) + "\n"
    descriptor = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(descriptor, line.encode())
    finally:
        os.close(descriptor)
    return path


def last_run(results_dir: Path, device: str) -> dict | None:
    """The last run recorded for ``device`` ({"header", "rows"}), or None."""
    path = history_path(results_dir, device)
    if not path.exists():
        return None
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    return json.loads(lines[-1]) if lines else None


def compare(previous: dict, rows: list[dict]) -> tuple[str, int]:
    """(text, number of regressions): each timed row of this run against the
    same row of ``previous``: the ratio of ours' medians, flagged REGRESSION
    or improved where the change exceeds both spreads (module doc)."""
    before = {_key(row): row for row in previous["rows"]}
    header = previous["header"]
    lines = [f"against the run of {header['date']} (commit {header['commit']}):"]
    regressions = improvements = matched = 0
    for row in rows:
        old = before.get(_key(row))
        if row.get("ours_ms") is None or old is None or old.get("ours_ms") is None:
            continue
        matched += 1
        new_ms, old_ms = row["ours_ms"], old["ours_ms"]
        new_low = new_ms * (1 - (row.get("ours_spread") or 0))
        new_high = new_ms * (1 + (row.get("ours_spread") or 0))
        old_low = old_ms * (1 - (old.get("ours_spread") or 0))
        old_high = old_ms * (1 + (old.get("ours_spread") or 0))
        change = new_ms / old_ms - 1
        if new_low > old_high and change >= MIN_CHANGE:
            verdict, regressions = "REGRESSION", regressions + 1
        elif new_high < old_low and -change >= MIN_CHANGE:
            verdict, improvements = "improved", improvements + 1
        else:
            continue
        lines.append(f"  {verdict:<10} {row['op']} {report.case_name(row, 40)} "
                     f"{report.implementation(row)} {row['dtype']} {row['layout']} "
                     f"{row['direction']}: {report.duration(old_ms)} -> "
                     f"{report.duration(new_ms)} ({change:+.0%})")
    lines.append(f"{matched} rows matched the previous run: {regressions} regressions and "
                 f"{improvements} improvements beyond the measured spread; the rest within it")
    return report.wrap("\n".join(lines)), regressions
