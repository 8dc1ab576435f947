"""Write ``src/bitsfusion/zoo/data/calibration_sentences.txt``: MiniLM's calibration text.

The evaluation set (``stdlib_sentences.txt``, from ``../shared/data``) is 1000 one-line docstrings of the
Python standard library. Calibration must not see those sentences, so this script collects the first
lines of *other* standard-library docstrings (functions, classes and methods of pure-Python modules),
drops every line that appears in the evaluation file, and keeps a deterministic sample of 512
(sorted, every ``step``-th, then shuffled with a fixed seed so that
any prefix of the file is a fair sample). Re-run it to regenerate; the output is committed.

Usage: ``python scripts/make_calibration_sentences.py``
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import random
import re
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EVAL = ROOT / "src/bitsfusion/zoo/data/stdlib_sentences.txt"
OUT = ROOT / "src/bitsfusion/zoo/data/calibration_sentences.txt"
COUNT = 512
SKIP = re.compile(r"^(test|idlelib|tkinter|turtle|antigravity|this|lib2to3|ensurepip|venv|__)")


def _first_line(obj: object) -> str | None:
    doc = inspect.getdoc(obj)
    if not doc:
        return None
    line = doc.strip().splitlines()[0].strip()
    ok = 20 <= len(line) <= 160 and line[0].isupper() and line.endswith(".") and "(" not in line[:1]
    return line if ok else None


def collect() -> set[str]:
    lines: set[str] = set()
    warnings.simplefilter("ignore")
    for info in pkgutil.iter_modules():
        if SKIP.match(info.name) or not info.module_finder.path.endswith(("lib/python3.11", "python3.11")):
            continue
        try:
            module = importlib.import_module(info.name)
        except Exception:  # noqa: BLE001 - optional stdlib modules may fail to import; skip them
            continue
        for _, obj in inspect.getmembers(module):
            if getattr(obj, "__module__", None) != module.__name__:
                continue
            if (line := _first_line(obj)) is not None:
                lines.add(line)
            if inspect.isclass(obj):
                for _, member in inspect.getmembers(obj, inspect.isfunction):
                    if (line := _first_line(member)) is not None:
                        lines.add(line)
    return lines


def main() -> None:
    evaluation = set(EVAL.read_text(encoding="utf-8").splitlines())
    pool = sorted(collect() - evaluation)
    if len(pool) < COUNT:
        raise SystemExit(f"only {len(pool)} candidate sentences, need {COUNT}")
    step = len(pool) / COUNT
    chosen = [pool[int(i * step)] for i in range(COUNT)]
    random.Random(0).shuffle(chosen)
    OUT.write_text("\n".join(chosen) + "\n", encoding="utf-8")
    print(f"{OUT}: {COUNT} sentences from {len(pool)} candidates, none in {EVAL.name}")


if __name__ == "__main__":
    main()
