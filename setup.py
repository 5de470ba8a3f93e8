"""Build of the optional C accelerator `ingest._fastline` (pyproject.toml holds all the
package's metadata; this file only adds the extension).

`optional=True`: where no C compiler or Python headers exist, `pip install -e .[dev]`
still succeeds and the ingester uses its pure-Python path (same points, see
ingest/points.py). The source's SHA-256 is compiled in, so a stale build is noticed
(ingest.points.ACCELERATOR says why it is not used; tests/ingest/test_fastline.py fails).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from setuptools import Extension, setup

SOURCE = "ingest/_fastline.c"
source_sha256 = hashlib.sha256((Path(__file__).parent / SOURCE).read_bytes()).hexdigest()

setup(ext_modules=[Extension(
    "ingest._fastline", [SOURCE], optional=True,
    define_macros=[("FASTLINE_SOURCE_SHA256", f'"{source_sha256}"')],
    extra_compile_args=["-O2", "-std=c11", "-Wall", "-Wextra"],
)])
