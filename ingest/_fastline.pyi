# The C accelerator built from ingest/_fastline.c (optional; see setup.py and ingest/points.py).

SOURCE_SHA256: str

def transcode(payload: bytes, max_bytes: int, earliest_ms: int,
              latest_ms: int) -> tuple[str, str, int, str, int] | None: ...
