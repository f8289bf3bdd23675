"""Build of cnnkernels: setuptools packages plus the CMake-built extension _C.

Environment:
  CNNK_WITH_CUDA=0|1   force the CUDA kernels off / on (default: on when nvcc is found)
  CNNK_CUDA_ARCHS      CUDA architectures (default "80;90a")
  CNNK_BUILD_JOBS      parallel compile jobs (default: CPU count)
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

from setuptools import Extension, find_packages, setup
from setuptools.command.build_ext import build_ext

ROOT = Path(__file__).resolve().parent


class CMakeExtension(Extension):
    def __init__(self, name: str):
        super().__init__(name, sources=[])


def _with_cuda_setting() -> str:
    value = os.environ.get("CNNK_WITH_CUDA", "").strip().upper()
    if value in ("", "AUTO"):
        return "AUTO"
    if value in ("1", "ON", "TRUE", "YES"):
        return "ON"
    if value in ("0", "OFF", "FALSE", "NO"):
        return "OFF"
    raise ValueError(f"CNNK_WITH_CUDA must be 0, 1 or AUTO, got {value!r}")


class CMakeBuild(build_ext):
    def build_extension(self, ext: Extension) -> None:
        import pybind11

        extdir = Path(self.get_ext_fullpath(ext.name)).parent.resolve()
        build_dir = Path(self.build_temp).resolve() / "cmake"
        build_dir.mkdir(parents=True, exist_ok=True)
        configure = [
            "cmake",
            str(ROOT),
            f"-DCMAKE_LIBRARY_OUTPUT_DIRECTORY={extdir}",
            f"-DPython_EXECUTABLE={sys.executable}",
            f"-Dpybind11_DIR={pybind11.get_cmake_dir()}",
            f"-DCNNK_WITH_CUDA={_with_cuda_setting()}",
            "-DCMAKE_BUILD_TYPE=Release",
        ]
        if os.environ.get("CNNK_CUDA_ARCHS"):
            configure.append(f"-DCNNK_CUDA_ARCHS={os.environ['CNNK_CUDA_ARCHS']}")
        if shutil.which("ninja"):
            configure += ["-G", "Ninja"]
        jobs = os.environ.get("CNNK_BUILD_JOBS", str(os.cpu_count() or 1))
        subprocess.run(configure, cwd=build_dir, check=True)
        subprocess.run(["cmake", "--build", ".", "-j", jobs], cwd=build_dir, check=True)


setup(
    ext_modules=[CMakeExtension("cnnkernels._C")],
    cmdclass={"build_ext": CMakeBuild},
    # kernels/ (the Triton kernels) installs as cnnkernels.kernels.
    packages=["cnnkernels", *(f"cnnkernels.{p}" for p in find_packages("cnnkernels")),
              "cnnkernels.kernels", *(f"cnnkernels.kernels.{p}" for p in find_packages("kernels"))],
    package_dir={"cnnkernels": "cnnkernels", "cnnkernels.kernels": "kernels"},
)
