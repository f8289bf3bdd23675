"""The benchmark's output: fixed-width tables built from columns, the
heading above them, and the JSON file.

A column is (title, width, row -> text); width 0 leaves the last column
unpadded. A family's ``COLUMNS`` names its cases (e.g. layers.LAYER_COLUMNS),
then CASE_COLUMNS, its own rate and error columns, and STATUS_COLUMN.
"""

from __future__ import annotations

import json
from pathlib import Path


def number(value: float | None, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def percent(fraction: float | None) -> str:
    return number(None if fraction is None else 100 * fraction, ".1f")


def errors(row: dict) -> str:
    """The max rel err of each result, e.g. grad_input/grad_weight."""
    return "/".join(f"{e:.1e}" for e in row["errors"].values()) or "-"


def indices(row: dict) -> str:
    """Integer results (max pooling's indices) against the reference's."""
    mismatches = row["index_mismatches"]
    return "-" if mismatches is None else f"{mismatches} off" if mismatches else "exact"


CASE_COLUMNS = (
    ("dir", 4, lambda r: {"forward": "fwd", "backward": "bwd"}[r["direction"]]),
    ("dtype", 8, lambda r: "tf32" if r.get("tf32") else r["dtype"]),
    ("backend", 7, lambda r: r["backend"]),
    ("ours ms", 9, lambda r: number(r["ours_ms"], ".3f")),
    ("torch ms", 9, lambda r: number(r["torch_ms"], ".3f")),
    ("speedup", 7, lambda r: number(r["speedup"], ".2f")),
)
STATUS_COLUMN = ("status", 0,
                 lambda r: r["status"].upper() if r["status"] == "wrong" else r["status"])


def _table_line(cells, columns: tuple) -> str:
    return " ".join(f"{c:<{w}}" if w else c
                    for c, (_, w, _) in zip(cells, columns, strict=True)).rstrip()


def table_header(columns: tuple) -> str:
    line = _table_line((title for title, _, _ in columns), columns)
    return f"{line}\n{'-' * len(line)}"


def table_row(row: dict, columns: tuple) -> str:
    """One fixed-width line; errors are listed after the table, not inline."""
    return _table_line((format_cell(row) for _, _, format_cell in columns), columns)


def heading(header: dict) -> str:
    """The lines above the tables: where the run happens and how to read it
    (on a CPU also the cpu backend's measured roofline and GEMM core)."""
    cpu = ""
    if header.get("cpu_peak_gflops"):
        gemm = header["gemm_core"]
        cpu = (f"cpu backend: {header['cpu_threads']} threads, {header['cpu_isa']} kernels; "
               f"roofline {header['cpu_peak_gflops']['float32']:.0f} GFLOP/s fp32 (FMA probe), "
               f"{header['cpu_copy_gbps']:.0f} GB/s copy; GEMM core {gemm['size']}^3: "
               f"{gemm['gflops']:.0f} GFLOP/s = {gemm['peak_fraction']:.0%} of peak "
               f"(torch.mm {gemm['torch_gflops']:.0f})\n")
    return (f"cnnkernels bench: {header['device']} | torch {header['torch']} | triton "
            f"{header['triton']} | CUDA {header['cuda']} | commit {header['commit']}\n"
            f"{cpu}layout {header['layout']}, batch {header['batch']}, backends "
            f"{', '.join(header['backends'])}, float32 as TF32 "
            f"{'allowed' if header['tf32'] else 'off'} (ours and torch's); speedup = torch ms "
            f"/ ours ms; max rel err = max|ours - ref| / max|ref| vs float64\n")


def write_json(path: Path, header: dict, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"header": header, "rows": rows}, indent=1) + "\n")
