"""What every example shares: its command line, the progress bar, the
output folder and the figures."""

import argparse
import importlib
import pathlib

import torch


def _require(module: str):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise SystemExit(f"this example needs {module.split('.')[0]}: "
                         f"pip install \"cnnkernels[examples]\"") from error


def parser(description: str, *, steps: int) -> argparse.ArgumentParser:
    """The options every example takes; ``steps`` is its default length."""
    cli = argparse.ArgumentParser(description=description)
    cli.add_argument("--out", type=pathlib.Path, default=pathlib.Path("cnnkernels-examples"),
                     help="folder for the PNG results (created if missing)")
    cli.add_argument("--steps", type=int, default=steps, help="optimisation steps")
    cli.add_argument("--backend", default=None, choices=("cpu", "cuda", "triton"),
                     help="cnnkernels backend (default: the best for the device)")
    cli.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    cli.add_argument("--seed", type=int, default=0)
    return cli


def progress(total: int, description: str):
    """A tqdm progress bar over ``range(total)``."""
    tqdm = _require("tqdm")
    return tqdm.trange(total, desc=description, unit="step", dynamic_ncols=True)


def pyplot():
    """matplotlib's pyplot on the file-only Agg backend (no display needed)."""
    matplotlib = _require("matplotlib")
    matplotlib.use("Agg")
    return importlib.import_module("matplotlib.pyplot")


def save(figure, out: pathlib.Path, name: str) -> pathlib.Path:
    out.mkdir(parents=True, exist_ok=True)
    path = out / name
    figure.savefig(path, dpi=110, bbox_inches="tight")
    pyplot().close(figure)
    print(f"wrote {path}")
    return path
