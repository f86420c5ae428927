"""The compiled part of preprocessing (livedigit/_draw.c), optional: where no C compiler is at hand the
package installs without it, and preprocessing draws the same images in numpy, more slowly. Everything
else about the package is in pyproject.toml."""

import sys

from setuptools import Extension, setup

# numpy rounds every product before adding it; a compiler that fused a * b + c into one instruction would
# round once, and the pixels would differ from numpy's in their last bits.
FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off"]

setup(ext_modules=[Extension("livedigit._draw", ["livedigit/_draw.c"], extra_compile_args=FLAGS, optional=True)])
