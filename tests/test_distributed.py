"""Several processes for real: 2 CPU processes (gloo) under torchrun against one process with the same batches."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from hf_forkmerge import ForkMergeConfig, ForkMergeTrainer

from .conftest import tiny_bert_model, token_task

WORKER = os.path.join(os.path.dirname(__file__), "distributed_worker.py")
GLOBAL_BATCH = 8


def run_worker(output_dir, branch_type: str, processes: int, mode: str = "data") -> subprocess.CompletedProcess:
    os.makedirs(output_dir, exist_ok=True)
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), WORKER, str(output_dir), branch_type, str(GLOBAL_BATCH), mode]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run(command, capture_output=True, text=True, env=env, timeout=300)


def run_ok(output_dir, branch_type: str, processes: int, mode: str = "data") -> None:
    result = run_worker(output_dir, branch_type, processes, mode)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]


def assert_same_run(one_dir, two_dir) -> None:
    ranks = [json.loads((two_dir / f"rank{r}.json").read_text()) for r in range(2)]
    assert ranks[0] == ranks[1]  # the same merge decisions and the same weights on every rank
    single = json.loads((one_dir / "rank0.json").read_text())
    assert len(single["merges"]) == len(ranks[0]["merges"]) == 2
    for merge_one, merge_two in zip(single["merges"], ranks[0]["merges"]):
        assert merge_two["weights"] == merge_one["weights"]
        assert merge_two["score"] == pytest.approx(merge_one["score"], abs=1e-5)

    one, two = load_file(one_dir / "final.safetensors"), load_file(two_dir / "final.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4, msg=name)
    assert (two_dir / "forkmerge_history.json").exists()


@pytest.mark.parametrize("branch_type", ["full", "lora"])
def test_two_processes_merge_like_one_process_with_the_same_global_batch(tmp_path, branch_type):
    run_ok(tmp_path / "one", branch_type, processes=1)
    run_ok(tmp_path / "two", branch_type, processes=2)
    assert_same_run(tmp_path / "one", tmp_path / "two")


@pytest.mark.parametrize("branch_type", ["full", "lora"])
def test_branch_parallel_on_two_processes_merges_like_the_sequential_run(tmp_path, branch_type):
    # One process per branch, each with the whole batch of its branch: the same batches as one sequential process.
    run_ok(tmp_path / "one", branch_type, processes=1)
    run_ok(tmp_path / "two", branch_type, processes=2, mode="branch")
    assert_same_run(tmp_path / "one", tmp_path / "two")
    logs = json.loads((tmp_path / "two" / "logs.json").read_text())
    assert {"target/main_loss", "joint/main_loss", "joint/aux_loss"} <= set(logs)  # both branches' losses reported


def test_an_exception_in_one_rank_stops_every_rank_with_the_error(tmp_path):
    result = run_worker(tmp_path, "full", processes=2, mode="fail")  # the timeout of run_worker catches a hang
    assert result.returncode != 0
    assert "planted failure on rank 1 at step 2" in result.stdout + result.stderr


def test_branch_parallel_in_one_process_fails_before_training(tmp_path):
    args = ForkMergeConfig(output_dir=str(tmp_path), target_task="main", fork_interval=2, max_steps=4,
                           branch_parallel=True, use_cpu=True, report_to=[])
    with pytest.raises(ValueError, match="branch_parallel: needs a multiple of 2 processes"):
        ForkMergeTrainer(model=tiny_bert_model(), args=args, train_dataset={"main": token_task(16, 1), "aux": token_task(16, 2)},
                         eval_dataset={"main": token_task(8, 3)})
