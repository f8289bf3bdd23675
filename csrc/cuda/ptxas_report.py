"""CMake compiler launcher for CUDA sources.

Runs the compile command it is given and writes the ptxas ``-v`` resource
report (registers, spills, shared memory per kernel and architecture) to
``<object>.ptxas.txt``, where setup.py collects it for the static GPU check
(benchmarks/static_check.py). Everything else the compiler prints is passed on.
"""

import subprocess
import sys


def main() -> int:
    command = sys.argv[1:]
    output = command[command.index("-o") + 1] if "-o" in command else None
    proc = subprocess.run(command, capture_output=True, text=True)
    report = [line for line in proc.stderr.splitlines() if line.startswith("ptxas info")]
    other = [line for line in proc.stderr.splitlines() if not line.startswith("ptxas info")]
    sys.stdout.write(proc.stdout)
    if other:
        sys.stderr.write("\n".join(other) + "\n")
    if output is not None and proc.returncode == 0:
        with open(output + ".ptxas.txt", "w") as f:
            f.write("\n".join(report) + "\n")
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
