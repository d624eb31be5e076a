"""Tests of nfncompile.experiments.distributed, and of fit under DDP with two CPU processes (gloo)."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
from safetensors.torch import load_file

from nfncompile.errors import ConfigError
from nfncompile.experiments.distributed import (
    DistInfo,
    _settled,
    all_gather_strided,
    all_reduce,
    dist_info,
    distributed_context,
    shard_indices,
)
from nfncompile.experiments.train import collate

WORKER = Path(__file__).with_name("_ddp_worker.py")


def test_dist_info_reads_the_environment(monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "1")
    info = dist_info()
    assert info == DistInfo(rank=1, world_size=2, local_rank=1)
    assert info.is_distributed and not info.is_main


@pytest.mark.parametrize(
    "env, match",
    [
        ({"RANK": "2", "WORLD_SIZE": "2"}, "need 0 <= rank < world_size"),
        ({"WORLD_SIZE": "two"}, "WORLD_SIZE='two' is not an integer"),
    ],
)
def test_dist_info_rejects_a_bad_environment(monkeypatch, env, match):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    with pytest.raises(ConfigError, match=match):
        dist_info()


def test_single_process_helpers_are_no_ops(monkeypatch):
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(k, raising=False)
    with distributed_context() as info:
        assert info == DistInfo() and info.is_main and not dist.is_initialized()
    t = torch.arange(5.0)
    assert all_reduce(t.clone(), op="max").equal(t)
    assert all_gather_strided(t, 5) is t
    with pytest.raises(ConfigError, match="unknown reduction 'mean'; valid: sum, max, min"):
        all_reduce(t, op="mean")


@pytest.mark.parametrize("n, world", [(7, 2), (11, 3), (2, 4)])
def test_shard_indices_partition(n, world):
    shards = [shard_indices(n, r, world) for r in range(world)]
    assert sorted(i for s in shards for i in s) == list(range(n))
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_settled_returns_only_once_the_backend_lets_go_of_the_tensors():
    """The gloo worker thread drops the tensors after the collective has returned; _settled
    waits for that (here a thread that holds the tensor 50 ms longer)."""
    tensor, held = torch.zeros(3), []

    def collective(t: torch.Tensor) -> None:
        held.append(t)

        def release() -> None:
            time.sleep(0.05)
            held.clear()

        threading.Thread(target=release).start()

    start = time.perf_counter()
    _settled([tensor], collective, tensor)
    assert not held and time.perf_counter() - start >= 0.05
    start = time.perf_counter()
    _settled([tensor], lambda t: t.add_(1), tensor)  # nothing held: no wait
    assert time.perf_counter() - start < 0.05 and tensor.tolist() == [1.0, 1.0, 1.0]


def _launch(cmd: list, env: dict) -> tuple[int, str]:
    proc = subprocess.Popen(
        cmd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the launcher and both workers
        output, _ = proc.communicate()
        pytest.fail(f"torchrun did not finish within 120 s:\n{output[-3000:]}")
    return proc.returncode, output


def test_fit_under_torchrun_with_two_cpu_processes(tmp_path):
    """Two gloo processes on loopback train over WeightSpaceFeatures: identical final weights,
    disjoint shares of the data, identical all-reduced metrics, rank 0's checkpoints."""
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "MASTER_ADDR": "127.0.0.1",
        "GLOO_SOCKET_IFNAME": "lo",
        "CUDA_VISIBLE_DEVICES": "",
    }
    for k in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_PORT"):
        env.pop(k, None)
    cmd = [
        *(sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--nproc_per_node", "2"),
        *("--rdzv-backend", "c10d", "--rdzv-endpoint", "127.0.0.1:0"),  # port 0: a free one
        *(str(WORKER), str(tmp_path)),
    ]
    returncode, output = _launch(cmd, env)
    # (an abort at exit, "terminate called without an active exception", was gloo releasing
    # the last collective's tensors during interpreter shutdown: distributed._settled)
    assert returncode == 0, output[-6000:]

    spec = importlib.util.spec_from_file_location("_ddp_worker", WORKER)
    w = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(w)
    ranks = [load_file(str(tmp_path / f"rank{r}.safetensors")) for r in range(2)]
    logs = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]

    # identical weights (the ranks started from different random inits) and predictions
    assert ranks[0].keys() == ranks[1].keys()
    assert all(torch.equal(ranks[0][k], ranks[1][k]) for k in ranks[0])
    model = w.FlatNet(13)
    model.load_state_dict({k[len("model.") :]: v for k, v in ranks[0].items() if k != "preds"})
    model.eval()
    val = w.make_items(w.N_VAL, 1, as_features=False)
    inputs, _ = collate(val)
    with torch.no_grad():
        expected = model(inputs)
    torch.testing.assert_close(ranks[0]["preds"], expected)  # gathered in the original order

    # each epoch, the ranks read disjoint halves of the training set, in a fresh order
    per_rank = w.N_TRAIN // 2
    epochs = w.EPOCHS + 1
    for log in logs:
        assert len(log["seen"]) == epochs * per_rank
    chunks = [
        [log["seen"][e * per_rank : (e + 1) * per_rank] for e in range(epochs)] for log in logs
    ]
    for e in range(epochs):
        assert sorted(chunks[0][e] + chunks[1][e]) == list(range(w.N_TRAIN))
    assert chunks[0][0] != chunks[0][1]

    # metrics are all-reduced / all-gathered: every rank logged the same history
    strip = [
        [{k: v for k, v in r.items() if k != "seconds"} for r in log["history"]] for log in logs
    ]
    assert strip[0] == strip[1] and len(strip[0]) == epochs
    assert all(r["val_metric"] is not None for r in strip[0])
    assert logs[0]["first_epochs"] == w.EPOCHS and logs[0]["resumed_from"] == w.EPOCHS
    assert logs[0]["best_epoch"] == logs[1]["best_epoch"]

    # rank 0 wrote the checkpoints; they hold the selected weights
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["world_size"] == 2 and state["epoch"] == epochs
    best = load_file(str(tmp_path / "ckpt" / "best.safetensors"))
    assert all(torch.equal(best[k], model.state_dict()[k]) for k in best)
    assert sorted(os.listdir(tmp_path / "ckpt")) == [
        "best.safetensors",
        "last.safetensors",
        "state.json",
    ]
