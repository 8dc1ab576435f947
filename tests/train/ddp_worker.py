"""Run by ``accelerate launch --num_processes 2 --cpu`` in ``test_accelerate.py``: distil the tiny pair and
write this rank's trained parameters and loss history to ``OUT/rank{r}.*``."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import safetensors.torch as st
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from bitsfusion.train.distill import DistillConfig, Distiller  # noqa: E402
from tests.train import tiny_distill as tiny  # noqa: E402


def main() -> None:
    out = Path(sys.argv[1])
    torch.set_num_threads(1)
    teacher, student = tiny.pair()
    cfg = DistillConfig(steps=int(sys.argv[2]), lr=3e-3, scale_lr=1e-2, warmup_steps=2, log_every=1)
    distiller = Distiller(teacher, student, forward=tiny.forward, output_loss=tiny.loss, features=("block1",),
                          config=cfg, progress=False, checkpoint_dir=out / "ck")
    result = distiller.fit(tiny.data())
    acc = distiller.accelerator
    rank = acc.process_index
    st.save_file({n: p.detach().contiguous() for n, p in distiller.student.named_parameters() if p.requires_grad},
                 str(out / f"rank{rank}.safetensors"))
    (out / f"rank{rank}.json").write_text(json.dumps({"world": acc.num_processes, "rank": rank,
                                                      "losses": [h["loss"] for h in result.history]}))


if __name__ == "__main__":
    main()
