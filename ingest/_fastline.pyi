# The C accelerator built from ingest/_fastline.c (optional; see setup.py and ingest/points.py).

SOURCE_SHA256: str
MAX_FIELDS: int
MAX_STRING_FIELD: int

def configure(reserved: tuple[str, ...], measurements: tuple[str, ...], max_samples: int) -> None: ...

def transcode(payload: bytes, max_bytes: int, earliest_ms: int,
              latest_ms: int) -> tuple[str, str, int, str, int, int] | None: ...
