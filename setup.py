"""Packaging. Nothing is compiled at install time: the CUDA extension is JIT-built on first use, so
`pip install .` works on a machine with no GPU and no compiler. The CUDA sources in the top-level `csrc/`
ship inside the installed package as `mobilevitv2_kernels/csrc/` so that the JIT build also works from an
installed wheel, not only from a source checkout."""

from setuptools import setup

setup(
    packages=["mobilevitv2", "mobilevitv2.bench", "mobilevitv2_kernels", "mobilevitv2_kernels.triton_kernels", "mobilevitv2_kernels.csrc"],
    package_dir={"mobilevitv2_kernels.csrc": "csrc"},
    package_data={"mobilevitv2_kernels.csrc": ["*.cu", "*.cuh", "*.cpp", "*.h"]},
)
