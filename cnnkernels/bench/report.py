"""The benchmark's output: fixed-width tables built from columns, the
heading above them, the JSON, CSV and Markdown files.

A column is (title, width, row -> text); width 0 leaves the last column
unpadded. The default table (compact_columns) fits WIDTH columns and is the
same for every family; ``--wide`` prints a family's own ``COLUMNS`` instead:
its cases' columns (e.g. layers.LAYER_COLUMNS), then CASE_COLUMNS, its own
rate and error columns, and STATUS_COLUMN.
"""

from __future__ import annotations

import csv
import json
import textwrap
from pathlib import Path

# The terminal width the default output fits in.
WIDTH = 100


def wrap(text: str, width: int = WIDTH) -> str:
    """Each line of ``text`` wrapped at ``width``, continuations indented."""
    return "\n".join(textwrap.fill(line, width, subsequent_indent="  ",
                                   break_on_hyphens=False) or line
                     for line in text.splitlines())


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def percent(fraction: float | None) -> str:
    return number(None if fraction is None else 100 * fraction, ".1f")


def significant(value: float) -> str:
    """Three significant digits (whole numbers from 100 up), no exponent above 0.001."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.3g}" if value < 0.001 else f"{value:#.3g}".rstrip(".")


def duration(ms: float | None) -> str:
    """ms in adaptive units: 812 us, 4.56 ms, 1.23 s."""
    if ms is None:
        return "-"
    if ms < 1:
        return f"{significant(ms * 1e3)} us"
    if ms < 1e3:
        return f"{significant(ms)} ms"
    return f"{significant(ms / 1e3)} s"


def timing(ms: float | None, spread: float | None) -> str:
    """Median and spread, e.g. ``4.56 ms ±3%``."""
    if ms is None:
        return "-"
    return f"{duration(ms)} ±{100 * (spread or 0):.0f}%"


def speedup_text(speedup: float | None) -> str:
    """torch time / ours, with the slowdown spelled out below 1:
    ``1.52x (faster)``, ``0.15x (6.7x slower)``."""
    if speedup is None:
        return "-"
    if speedup >= 1:
        return f"{speedup:.2f}x (faster)"
    return f"{speedup:.2f}x ({significant(1 / speedup)}x slower)"


def speedup_short(speedup: float | None) -> str:
    """The table's form: ``1.52x faster``, ``6.67x slower``."""
    if speedup is None:
        return "-"
    if speedup >= 1:
        return f"{significant(speedup)}x faster"
    return f"{significant(1 / speedup)}x slower"


def rate(row: dict) -> str:
    """FLOP/s for an op with flops, else bytes/s, in adaptive units (MFLOP/s to
    TFLOP/s, MB/s to TB/s)."""
    if row.get("tflops") is not None:
        return _scaled(row["tflops"] * 1e12, "FLOP/s")
    if row.get("gbps") is not None:
        return _scaled(row["gbps"] * 1e9, "B/s")
    return "-"


def _scaled(value: float, unit: str) -> str:
    """``value`` with the SI prefix that leaves 1 to 999 of it (M to T)."""
    for factor, prefix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if value >= factor:
            return f"{significant(value / factor)} {prefix}{unit}"
    return f"{significant(value / 1e6)} M{unit}"


def errors(row: dict) -> str:
    """The max rel err of each result, e.g. grad_input/grad_weight."""
    return "/".join(f"{e:.1e}" for e in row["errors"].values()) or "-"


def indices(row: dict) -> str:
    """Integer results (max pooling's indices) against the reference's."""
    mismatches = row["index_mismatches"]
    return "-" if mismatches is None else f"{mismatches} off" if mismatches else "exact"


def check(row: dict) -> str:
    """The status and the largest error: ``ok 1.2e-07``, ``WRONG 3.1e-01``,
    ``error``, ``skipped``; ``exact`` for integer-only results."""
    status = row["status"]
    if status not in ("ok", "wrong"):
        return status
    values = list(row["errors"].values())
    worst = f"{max(values):.1e}" if values else "exact"
    if row.get("index_mismatches"):
        worst = f"{row['index_mismatches']} idx off"
    return f"{'ok' if status == 'ok' else 'WRONG'} {worst}"


def case_name(row: dict, width: int) -> str:
    text = f"{row.get('group', '')} {row.get('name', '')}".strip()
    return text if len(text) <= width else text[:width - 1] + "~"


def implementation(row: dict) -> str:
    return f"{row['backend']} {row['algorithm']}" if row.get("algorithm") else row["backend"]


def compact_columns(timed: bool = True) -> tuple:
    """The default table: at most WIDTH characters, the same for every
    family; verify's (``timed`` False) drops the timing columns."""
    head = (("case", 21, lambda r: case_name(r, 21)),
            ("impl", 20, implementation))
    if not timed:
        return (*head, ("shape", 32, lambda r: r["shape"][:32]), ("check", 0, check))
    return (*head,
            ("ours", 11, lambda r: timing(r["ours_ms"], r["ours_spread"])),
            ("vs torch", 12, lambda r: speedup_short(r["speedup"])),
            ("rate", 12, rate),
            ("roof%", 5, lambda r: percent(r["roofline_fraction"])),
            ("check", 0, check))


CASE_COLUMNS = (
    ("dir", 4, lambda r: {"forward": "fwd", "backward": "bwd"}[r["direction"]]),
    ("dtype", 8, lambda r: "tf32" if r.get("tf32") else r["dtype"]),
    ("backend", 7, lambda r: r["backend"]),
    ("ours", 11, lambda r: timing(r["ours_ms"], r.get("ours_spread"))),
    ("torch", 11, lambda r: timing(r["torch_ms"], r.get("torch_spread"))),
    ("speedup", 19, lambda r: speedup_text(r["speedup"])),
)
STATUS_COLUMN = ("status", 0,
                 lambda r: r["status"].upper() if r["status"] == "wrong" else r["status"])


def _table_line(cells, columns: tuple) -> str:
    return " ".join(f"{c:<{w}}" if w else c
                    for c, (_, w, _) in zip(cells, columns, strict=True)).rstrip()


def table_header(columns: tuple) -> str:
    line = _table_line((title for title, _, _ in columns), columns)
    return f"{line}\n{'-' * min(len(line), WIDTH)}"


def table_row(row: dict, columns: tuple) -> str:
    """One fixed-width line; errors are listed after the table, not inline."""
    return _table_line((format_cell(row) for _, _, format_cell in columns), columns)


def heading(header: dict) -> str:
    """The lines above the tables: where the run happens, with what, and how
    to read it (on a CPU also the measured roofline and GEMM core)."""
    lines = [f"cnnkernels {header['cnnkernels']} {header['command']} on {header['device']} "
             f"({header['cpu_threads']} CPU threads), {header['date']}",
             f"torch {header['torch']}, triton {header['triton'] or 'not installed'}, "
             f"CUDA {header['cuda'] or 'none'}, commit {header['commit']}"]
    if header.get("device_type") == "cuda":
        lines.append(f"TF32 {'allowed' if header['tf32'] else 'off'} (ours and torch's), "
                     f"cudnn.benchmark {header['cudnn_benchmark']}, cuDNN {header['cudnn']}")
    if header.get("cpu_peak_gflops"):
        gemm = header["gemm_core"]
        lines.append(f"cpu roofline: {header['cpu_peak_gflops']['float32']:.0f} GFLOP/s fp32 "
                     f"(FMA probe, {header['cpu_isa']}), {header['cpu_copy_gbps']:.0f} GB/s copy; "
                     f"GEMM core {gemm['size']}^3 at {gemm['gflops']:.0f} GFLOP/s = "
                     f"{gemm['peak_fraction']:.0%} of peak (torch.mm {gemm['torch_gflops']:.0f})")
    lines.append(f"backends: {', '.join(header['backends'])}; batch {header['batch']}; "
                 f"layouts {', '.join(header['layouts'])}; dtypes {', '.join(header['dtypes'])}")
    for backend, reason in header.get("excluded", {}).items():
        lines.append(f"not run: {backend}: {reason}")
    if header["command"] == "bench":
        lines.append("vs torch = torch time / ours (same process, same inputs); check = max "
                     "|ours - ref| / max |ref| against torch in float64")
    return wrap("\n".join(lines)) + "\n"


def write_json(path: Path, header: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")


def write_csv(path: Path, rows: list[dict]) -> None:
    """Every row, one line each: nested values (the errors) as JSON text."""
    fields = list(dict.fromkeys(key for row in rows for key in row))
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as out:
        writer = csv.DictWriter(out, fields)
        writer.writeheader()
        for row in rows:
            writer.writerow({key: json.dumps(value) if isinstance(value, dict | list) else value
                             for key, value in row.items()})


def markdown(header: dict, sections: list[tuple[str, list[dict]]], summary: str,
             comparison: str | None = None) -> str:
    """A Markdown report: the header as a table, one table per section
    (heading, rows) in the compact columns, the summary and the comparison
    with the previous run."""
    lines = [f"# cnnkernels {header['command']}: {header['device']}, {header['date']}", "",
             "| | |", "| --- | --- |"]
    for key in ("device", "cpu_threads", "torch", "triton", "cuda", "cudnn", "cudnn_benchmark",
                "tf32", "commit", "backends", "excluded", "dtypes", "layouts", "batch", "quick"):
        value = header.get(key)
        if isinstance(value, dict):
            value = "; ".join(f"{k}: {v}" for k, v in value.items()) or "-"
        elif isinstance(value, list):
            value = ", ".join(map(str, value))
        lines.append(f"| {key} | {'-' if value in (None, '') else value} |")
    columns = compact_columns(header["command"] == "bench")
    for title, rows in sections:
        lines += ["", f"## {title}", "", "| " + " | ".join(c[0] for c in columns) + " |",
                  "|" + " --- |" * len(columns)]
        lines += ["| " + " | ".join(cell(row) for _, _, cell in columns) + " |" for row in rows]
    lines += ["", "## Summary", "", "```", summary, "```"]
    if comparison:
        lines += ["", "## Against the previous run", "", "```", comparison, "```"]
    return "\n".join(lines) + "\n"
