"""Writing files so that a crash or ``kill -9`` never leaves a truncated one.

Each writer writes a temporary file in the same folder, flushes it to disk, then
renames it over the target: a rename within one folder is atomic, so readers see
either the old file or the new one, never half of one.
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import BinaryIO


def atomic_write(path: str | os.PathLike, write: Callable[[BinaryIO], None]) -> Path:
    """Call ``write(handle)`` on a temporary file, then move it to ``path``."""
    path = Path(path)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(temporary, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    finally:
        if temporary.exists():
            temporary.unlink()
    return path


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    return atomic_write(path, lambda handle: handle.write(data))


def atomic_write_json(path: str | os.PathLike, value) -> Path:
    text = json.dumps(value, indent=2, sort_keys=False) + "\n"
    return atomic_write_bytes(path, text.encode())


def atomic_save_figure(path: str | os.PathLike, figure) -> Path:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    return atomic_write_bytes(path, buffer.getvalue())
