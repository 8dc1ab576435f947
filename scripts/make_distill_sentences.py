"""Write ``src/bitsfusion/zoo/data/distill_sentences.txt.gz``: unlabelled English text for distilling MiniLM.

Distillation needs many more sentences than calibration, and none of them may be what the quantized model
is judged on (``stdlib_sentences.txt``, one-line docstrings of the standard library) or calibrated on
(``calibration_sentences.txt``). This script reads the docstrings of installed *third-party* packages
(numpy, scipy, torch, transformers, ...) by parsing their source with ``ast`` (nothing is imported or
executed), splits each docstring's first paragraph into sentences, keeps English-looking ones of 20 to 200
characters, drops every sentence that also appears (case- and space-normalised) in the evaluation or
calibration file, deduplicates, and keeps a deterministic sample of ``COUNT`` (sorted, every ``step``-th,
then shuffled with a fixed seed so any prefix is a fair sample). The output is committed; re-run to
regenerate (the sample depends on the installed package versions, which is why it is committed).

Usage: ``python scripts/make_distill_sentences.py``
"""

from __future__ import annotations

import ast
import gzip
import importlib.util
import random
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "src/bitsfusion/zoo/data"
EXCLUDE = (DATA / "stdlib_sentences.txt", DATA / "calibration_sentences.txt")
OUT = DATA / "distill_sentences.txt.gz"
COUNT = 32_000
PACKAGES = ("numpy", "scipy", "torch", "transformers", "sklearn", "sympy", "matplotlib", "networkx",
            "hypothesis", "rich", "huggingface_hub", "accelerate", "PIL", "fsspec", "tokenizers", "jinja2",
            "pygments", "yaml", "pydantic", "click", "typer", "httpx2", "fontTools", "joblib", "mpmath")
SENTENCE_END = re.compile(r"(?<=[a-z0-9)\]][.!?])\s+(?=[A-Z])")
WORD = re.compile(r"[A-Za-z]{2,}")


def _normalise(s: str) -> str:
    return " ".join(s.lower().split())


def _sentences(doc: str) -> list[str]:
    para = doc.strip().split("\n\n")[0]
    flat = " ".join(para.split())
    out = []
    for s in SENTENCE_END.split(flat):
        words = s.split()
        if not 20 <= len(s) <= 200 or not s[0].isupper() or not s.endswith("."):
            continue
        if any(tok in s for tok in (">>>", "::", "..", "http", "`", "$", "\\", "{", "}", "=", "_")):
            continue
        if len(words) < 4 or len(WORD.findall(s)) < 0.7 * len(words):
            continue
        out.append(s)
    return out


def _docstrings(path: Path) -> list[str]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="ignore"))
    except (SyntaxError, ValueError):
        return []
    nodes = [tree, *(n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                  ast.ClassDef)))]
    return [d for n in nodes if (d := ast.get_docstring(n))]


def collect() -> set[str]:
    found: set[str] = set()
    for name in PACKAGES:
        spec = importlib.util.find_spec(name)
        if spec is None or not spec.submodule_search_locations:
            continue
        for root in spec.submodule_search_locations:
            for path in sorted(Path(root).rglob("*.py")):
                if "test" in path.parts[-1] or any(p in ("tests", "testing") for p in path.parts):
                    continue
                for doc in _docstrings(path):
                    found.update(_sentences(doc))
    return found


def main() -> None:
    excluded = {_normalise(line) for f in EXCLUDE for line in f.read_text(encoding="utf-8").splitlines()}
    by_norm: dict[str, str] = {}
    for s in sorted(collect()):
        by_norm.setdefault(_normalise(s), s)
    pool = sorted(s for n, s in by_norm.items() if n not in excluded)
    if len(pool) < COUNT:
        raise SystemExit(f"only {len(pool)} candidate sentences, need {COUNT}")
    step = len(pool) / COUNT
    chosen = [pool[int(i * step)] for i in range(COUNT)]
    random.Random(0).shuffle(chosen)
    tmp = OUT.with_suffix(".tmp")
    with gzip.GzipFile(tmp, "wb", mtime=0) as f:
        f.write(("\n".join(chosen) + "\n").encode("utf-8"))
    tmp.replace(OUT)
    print(f"{OUT}: {COUNT} sentences from {len(pool)} candidates, none in {', '.join(p.name for p in EXCLUDE)}")


if __name__ == "__main__":
    main()
