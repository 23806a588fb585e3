"""Kill a ForkMerge run with SIGKILL at several points, resume it, and get the uninterrupted run's weights."""

import json
import os
import signal
import subprocess
import sys

import pytest
from safetensors.torch import load_file

from hf_forkmerge.checkpoint import STATE_FILE, complete_checkpoint

from .resume_worker import KILL_POINTS, PARALLEL_KILL_POINTS

WORKER = os.path.join(os.path.dirname(__file__), "resume_worker.py")


def start(output_dir, mode: str, processes: int = 1) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}
    launcher = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}"]
    command = [*(launcher if processes > 1 else [sys.executable]), WORKER, str(output_dir), mode]
    return subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)


def finish(process: subprocess.Popen) -> tuple[int, str]:
    output, _ = process.communicate(timeout=300)
    return process.returncode, output


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every kill point killed, then resumed; all processes started together to use both cores."""
    root = tmp_path_factory.mktemp("resume")
    reference = start(root / "uninterrupted", "none")
    killed = {point: start(root / point, point) for point in KILL_POINTS}
    results = {point: finish(process) for point, process in killed.items()}
    results["checkpoints after the kill"] = {
        point: (sorted(path.name for path in (root / point).glob("checkpoint-*")), os.path.basename(complete_checkpoint(str(root / point), True)))
        for point in KILL_POINTS
    }
    resumed = {point: start(root / point, "resume") for point in KILL_POINTS}
    results |= {f"{point}/resumed": finish(process) for point, process in resumed.items()}
    results["uninterrupted"] = finish(reference)
    return root, results


@pytest.mark.parametrize("point", list(KILL_POINTS))
def test_a_killed_run_resumes_to_the_uninterrupted_weights(runs, point):
    root, results = runs
    returncode, output = results[point]
    assert returncode == -signal.SIGKILL, output[-2000:]
    returncode, output = results[f"{point}/resumed"]
    assert returncode == 0, output[-3000:]
    assert results["uninterrupted"][0] == 0, results["uninterrupted"][1][-3000:]
    expected = load_file(root / "uninterrupted" / "final.safetensors")
    actual = load_file(root / point / "final.safetensors")
    for name, tensor in expected.items():
        assert (actual[name] - tensor).abs().max().item() <= 1e-6, name
    history = json.loads((root / point / "forkmerge_history.json").read_text())
    assert [merge["step"] for merge in history["merges"]] == [6, 12, 18]


def test_a_killed_branch_parallel_run_resumes_to_the_uninterrupted_weights(tmp_path):
    (point,) = PARALLEL_KILL_POINTS
    reference = start(tmp_path / "uninterrupted", "none", processes=2)
    returncode, output = finish(start(tmp_path / "killed", point, processes=2))
    assert returncode != 0, output[-2000:]  # torchrun ends the other process when one is killed
    assert os.path.basename(complete_checkpoint(str(tmp_path / "killed"), True)) == "checkpoint-3"
    returncode, output = finish(start(tmp_path / "killed", "resume", processes=2))
    assert returncode == 0, output[-3000:]
    returncode, output = finish(reference)
    assert returncode == 0, output[-3000:]
    expected = load_file(tmp_path / "uninterrupted" / "final.safetensors")
    actual = load_file(tmp_path / "killed" / "final.safetensors")
    for name, tensor in expected.items():
        assert (actual[name] - tensor).abs().max().item() <= 1e-6, name
    history = json.loads((tmp_path / "killed" / "forkmerge_history.json").read_text())
    assert [merge["step"] for merge in history["merges"]] == [3, 6, 9]


def test_a_checkpoint_cut_off_while_saving_is_skipped(runs):
    _, results = runs
    assert results["checkpoints after the kill"]["during_save"] == (["checkpoint-12", "checkpoint-6"], "checkpoint-6")
    assert results["checkpoints after the kill"]["right_after_save"] == (["checkpoint-12", "checkpoint-6"], "checkpoint-12")
    assert results["checkpoints after the kill"]["mid_interval_target_branch"] == (["checkpoint-6"], "checkpoint-6")


def test_resuming_an_incomplete_or_missing_checkpoint_fails_clearly(tmp_path):
    with pytest.raises(ValueError, match="no complete ForkMerge checkpoint in"):
        complete_checkpoint(str(tmp_path), True)
    incomplete = tmp_path / "checkpoint-12"
    incomplete.mkdir()
    (incomplete / "model.safetensors").write_bytes(b"")
    with pytest.raises(ValueError, match=f"checkpoint-12 is incomplete: it has no {STATE_FILE}"):
        complete_checkpoint(str(tmp_path), str(incomplete))
    with pytest.raises(ValueError, match="checkpoint-99 does not exist"):
        complete_checkpoint(str(tmp_path), str(tmp_path / "checkpoint-99"))
