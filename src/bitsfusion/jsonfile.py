"""JSON files the steps hand each other (plans, sensitivity tables): atomic writes, reads with clear errors.

``write_json(path, obj)`` writes to a temporary file beside ``path``, flushes it to disk and renames it
over ``path``, so a crash leaves either the old file or the new one, never half of one.
``read_json(path, what, missing_hint)`` raises ``ConfigError`` naming the file and the fix when it is
missing or not JSON.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError

__all__ = ["write_json", "read_json"]


def write_json(path: str | os.PathLike[str], obj: Any, *, indent: int = 2) -> Path:
    """Write ``obj`` as JSON to ``path`` atomically (temporary file, fsync, rename); return the path."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(json.dumps(obj, indent=indent) + "\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


def read_json(path: str | os.PathLike[str], what: str, missing_hint: str = "") -> Any:
    """The JSON value in ``path``; ``ConfigError`` "``path``: ``what`` not found[; hint]" or "not valid JSON"."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: {what} not found" + (f"; {missing_hint}" if missing_hint else "")) from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path}: not a valid JSON {what} ({e})") from None
