"""Two CPU processes under ``accelerate launch`` (gloo) train in step: same parameters on both ranks.

``accelerate launch --cpu --num_processes 2`` starts several processes only through ``mpirun`` (not installed
here); ``--multi_gpu --num_processes 2`` starts them with torchrun, and on a machine without CUDA the
``Distiller``'s default ``Accelerator(cpu=True)`` joins them over gloo (``DistributedType.MULTI_CPU``).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import safetensors.torch as st
import torch

WORKER = Path(__file__).with_name("ddp_worker.py")


def test_two_processes_train_in_step(tmp_path) -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
           "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "29533",
           str(WORKER), str(tmp_path), "30"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [log["world"] for log in logs] == [2, 2]
    params = [st.load_file(str(tmp_path / f"rank{r}.safetensors")) for r in (0, 1)]
    assert params[0].keys() == params[1].keys() and params[0]
    for name in params[0]:
        assert torch.equal(params[0][name], params[1][name]), name
    losses = logs[0]["losses"]
    assert logs[0]["losses"] == logs[1]["losses"]  # the logged loss is the mean over ranks
    assert sum(losses[-5:]) < 0.7 * sum(losses[:5]), losses
    assert (tmp_path / "ck" / "trainer.json").exists()  # only the main process wrote it, once
    assert json.loads((tmp_path / "ck" / "trainer.json").read_text())["world_size"] == 2
