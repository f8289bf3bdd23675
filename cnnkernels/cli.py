"""The ``cnnkernels`` command (also ``python -m cnnkernels``).

    cnnkernels bench [--quick] [--json PATH] ...   time every op family against torch
                                                   on the reference models' layers
    cnnkernels info                                what was built and what runs here
"""

from __future__ import annotations

import argparse


def _info(_args: argparse.Namespace) -> int:
    import cnnkernels

    details = cnnkernels.info()
    width = max(map(len, details))
    for key, value in details.items():
        print(f"{key:<{width}}  {'-' if value in (None, '') else value}")
    return 0


def _bench(args: argparse.Namespace) -> int:
    from cnnkernels import bench

    return bench.main(args)


def _parser() -> argparse.ArgumentParser:
    from cnnkernels import bench

    parser = argparse.ArgumentParser(
        prog="cnnkernels", description="cnnkernels: CNN kernels as PyTorch operators")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    bench_parser = commands.add_parser(
        "bench", help="time every op family against torch on the reference models' shapes",
        description=bench.__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(bench_parser)
    bench_parser.set_defaults(handler=_bench)
    info_parser = commands.add_parser("info", help="what was built, what is importable, "
                                                   "and the device")
    info_parser.set_defaults(handler=_info)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse ``argv`` (default: sys.argv[1:]), run the subcommand, return its exit status."""
    args = _parser().parse_args(argv)
    return args.handler(args)
