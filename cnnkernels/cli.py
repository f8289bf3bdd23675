"""The ``cnnkernels`` command (also ``python -m cnnkernels``).

    cnnkernels bench [--quick] ...    time every op family against torch on the
                                      reference models' layers
    cnnkernels verify [--quick] ...   check every op, backend, algorithm, dtype and
                                      layout against float64 torch; exit 1 on a failure
    cnnkernels tune                   pre-tune the Triton kernels (GPU) on the models' shapes
    cnnkernels info                   what was built and what runs here

Parsing and --help import neither torch nor Triton (the package's names load
on first use, cnnkernels/__init__.py): a command imports what it needs when
it runs.
"""

from __future__ import annotations

import argparse

from cnnkernels import __version__, bench


def _info(_args: argparse.Namespace) -> int:
    import cnnkernels

    details = cnnkernels.info()
    width = max(map(len, details))
    for key, value in details.items():
        print(f"{key:<{width}}  {'-' if value in (None, '') else value}")
    return 0


def _command(name: str):
    """The handler of a bench subcommand, imported when it runs."""

    def handler(args: argparse.Namespace) -> int:
        from cnnkernels.bench import command

        return getattr(command, name)(args)

    return handler


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cnnkernels", description="cnnkernels: CNN kernels as PyTorch operators")
    parser.add_argument("--version", action="version", version=f"cnnkernels {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, summary, describe, add_arguments in (
            ("bench", "time every op family against torch on the reference models' shapes",
             bench.BENCH_DESCRIPTION, bench.add_bench_arguments),
            ("verify", "check every op on every backend here against float64 torch",
             bench.VERIFY_DESCRIPTION, bench.add_verify_arguments),
            ("tune", "pre-tune the Triton kernels on the reference models' shapes (GPU)",
             bench.TUNE_DESCRIPTION, bench.add_tune_arguments)):
        sub = commands.add_parser(name, help=summary, description=describe,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
        add_arguments(sub)
        sub.set_defaults(handler=_command(name))
    info_parser = commands.add_parser("info", help="what was built, what is importable, "
                                                   "and the device")
    info_parser.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return its exit status."""
    args = _parser().parse_args(argv)
    return args.handler(args)
