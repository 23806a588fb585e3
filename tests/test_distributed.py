"""Data parallelism for real: 2 CPU processes (gloo) under torchrun against one process with the same global batch."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
GLOBAL_BATCH = 8


def run_worker(output_dir, branch_type: str, processes: int) -> None:
    os.makedirs(output_dir, exist_ok=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), WORKER, str(output_dir), branch_type, str(GLOBAL_BATCH)]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


@pytest.mark.parametrize("branch_type", ["full", "lora"])
def test_two_processes_merge_like_one_process_with_the_same_global_batch(tmp_path, branch_type):
    run_worker(tmp_path / "one", branch_type, processes=1)
    run_worker(tmp_path / "two", branch_type, processes=2)

    ranks = [json.loads((tmp_path / "two" / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # the same merge decisions and the same weights on every rank
    single = json.loads((tmp_path / "one" / "rank0.json").read_text())
    assert len(single["merges"]) == len(ranks[0]["merges"]) == 2
    for merge_one, merge_two in zip(single["merges"], ranks[0]["merges"]):
        assert merge_two["weights"] == merge_one["weights"]
        assert merge_two["score"] == pytest.approx(merge_one["score"], abs=1e-5)

    one, two = load_file(tmp_path / "one" / "final.safetensors"), load_file(tmp_path / "two" / "final.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert (tmp_path / "two" / "forkmerge_history.json").exists()
