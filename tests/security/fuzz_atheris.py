"""Coverage-guided fuzzing of the codec and the config loader with atheris (optional: not
part of the test suite, not a project dependency; see docs/reliability-security.md).

    pip install --target /tmp/atheris atheris
    PYTHONPATH=/tmp/atheris .venv/bin/python tests/security/fuzz_atheris.py codec -max_total_time=60
    PYTHONPATH=/tmp/atheris .venv/bin/python tests/security/fuzz_atheris.py config -max_total_time=60

A finding is any exception other than PayloadError / ConfigError (atheris stops and
writes the input as crash-<hash>).
"""

from __future__ import annotations

import contextlib
import sys
import tempfile
from pathlib import Path

import atheris  # type: ignore[import-not-found, unused-ignore]

with atheris.instrument_imports():
    from urbansense import codec, config

_DIR = Path(tempfile.mkdtemp(prefix="fuzz-config-"))
_FILE = _DIR / "gw-1.yaml"


def fuzz_codec(data: bytes) -> None:
    for decode in (codec.decode_batch_lenient, codec.decode_status, codec.decode_alert):
        with contextlib.suppress(codec.PayloadError):
            decode(data)


def fuzz_config(data: bytes) -> None:
    _FILE.write_bytes(data)
    with contextlib.suppress(config.ConfigError):
        config.load_gateway(_FILE)


def main() -> None:
    target = {"codec": fuzz_codec, "config": fuzz_config}[sys.argv.pop(1)]
    atheris.Setup(sys.argv, target)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
