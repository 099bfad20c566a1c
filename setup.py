"""Builds the C++ engine, fastsafetensors._cpp, with g++ and pybind11 alone.

CUDA and cuFile are loaded at run time, so nothing here needs CUDA headers or libraries.
Set FASTSAFETENSORS_SANITIZE=address,undefined to build an instrumented engine for tests.
"""

import os
from glob import glob

from pybind11.setup_helpers import ParallelCompile, Pybind11Extension, build_ext
from setuptools import setup

ParallelCompile("FASTSAFETENSORS_BUILD_JOBS", default=0).install()

compile_args = ["-O3", "-fvisibility=hidden", "-Wall", "-Wextra", "-Wno-unused-parameter"]
link_args = ["-pthread"]
sanitize = os.environ.get("FASTSAFETENSORS_SANITIZE")
if sanitize:
    flags = [f"-fsanitize={sanitize}", "-fno-omit-frame-pointer", "-g"]
    compile_args = ["-O1", *flags]
    link_args += flags

sources = sorted(glob("csrc/*.cpp")) + sorted(glob("csrc/python/*.cpp"))

setup(
    ext_modules=[
        Pybind11Extension(
            "fastsafetensors._cpp",
            sources,
            include_dirs=["csrc"],
            cxx_std=17,
            extra_compile_args=compile_args,
            extra_link_args=link_args,
            libraries=["dl"],
        )
    ],
    cmdclass={"build_ext": build_ext},
)
