"""--strategy multi_worker: two worker processes on 127.0.0.1 train what one process trains.

Each worker is a real ``python -m ml3tf train`` with its own ``TF_CONFIG``, on ports found by
binding port 0; every wait has a timeout and every child is killed in a ``finally``.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from ml3tf import cli
from ml3tf.distribute import WorkerLostError, _lost_worker, make_strategy, parse_tf_config

WORKERS = 2
#: The sine protocol shrunk to seconds: 2 tasks per meta-step, one per worker.
ARGS = [
    "--mode", "family", "--n-points", "16", "--n-test-tasks", "2", "--inner-steps", "2",
    "--meta-batch-size", "2", "--quiet",
]  # fmt: skip
#: A worker's whole life (start, connect, trace, a few meta-steps) on a shared 2-core machine.
RUN_TIMEOUT_S = 240
#: How long the survivor may take to notice a dead peer (TensorFlow's coordination-service
#: heartbeats find it within seconds; the collective timeout would take minutes).
LOST_TIMEOUT_S = 60


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _tf_config(ports: list[int], index: int) -> str:
    workers = [f"127.0.0.1:{p}" for p in ports]
    return json.dumps({"cluster": {"worker": workers}, "task": {"type": "worker", "index": index}})


def _launch(tmp_path, out_dirs: list[str], extra: list[str], tag: str) -> list[subprocess.Popen]:
    """One ``ml3tf train`` per worker (``out_dirs[i]`` for worker i), stderr to a log file."""
    ports = _free_ports(WORKERS)
    procs = []
    for i, out in enumerate(out_dirs):
        tmp = tmp_path / f"tmp{i}"  # where worker i keeps its temporary copy of the run
        tmp.mkdir(exist_ok=True)
        env = dict(os.environ, TF_CONFIG=_tf_config(ports, i), TF_CPP_MIN_LOG_LEVEL="2", TMPDIR=str(tmp))
        cmd = [sys.executable, "-m", "ml3tf", "train", "sine", "--out-dir", out, *ARGS]
        log = open(tmp_path / f"{tag}-worker{i}.log", "w")  # the child keeps its copy
        procs.append(
            subprocess.Popen(
                [*cmd, "--strategy", "multi_worker", *extra], env=env, stdout=log, stderr=subprocess.STDOUT
            )
        )
        log.close()
    return procs


def _wait(procs: list[subprocess.Popen], timeout: float) -> list[int]:
    deadline = time.monotonic() + timeout
    return [p.wait(timeout=max(deadline - time.monotonic(), 1)) for p in procs]


def _kill(procs: list[subprocess.Popen]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
            p.wait(timeout=30)


def _log(tmp_path, tag: str, i: int) -> str:
    return (tmp_path / f"{tag}-worker{i}.log").read_text()


def _metrics(run_dir) -> np.ndarray:
    with open(os.path.join(run_dir, "metrics.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    assert [r["step"] for r in lines] == list(range(len(lines)))
    keys = ("objective", "task_loss", "initial_loss", "meta_grad_norm")
    return np.array([[r[k] for k in keys] for r in lines])


def _phi(run_dir) -> list[np.ndarray]:
    from ml3tf.meta_loss import load_meta_loss

    return load_meta_loss(os.path.join(run_dir, "meta_loss.keras")).get_weights()


def _single(out: str, extra: list[str]) -> None:
    """The same run in this process with the default strategy: one device, the whole meta-batch."""
    assert cli.main(["train", "sine", "--out-dir", out, *ARGS, *extra]) == 0


def _assert_same_training(got_dir, ref_dir) -> None:
    # float32. One process averages the 2 tasks' objectives (add_n / 2) and differentiates that;
    # two workers each differentiate their one task and the all-reduce averages the 2 gradients.
    # Same terms, other order of rounding: every loss and gradient differs by a few u (u = 6e-8)
    # relative. Adam passes that on without growth over a few steps (its step depends on g only
    # through g/√v̂), so rtol 1e-5 leaves a margin of ~100×, as in test_distribute's mirrored
    # test; a worker's gradient lost or not averaged is off by far more (≥ 1e-3 relative).
    np.testing.assert_allclose(_metrics(got_dir), _metrics(ref_dir), rtol=1e-5, atol=1e-7)
    for a, b in zip(_phi(got_dir), _phi(ref_dir), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_two_workers_train_what_one_process_trains(tmp_path):
    extra = ["--meta-steps", "4", "--checkpoint-every", "2", "--no-eval"]
    out = str(tmp_path / "mw")
    procs = _launch(tmp_path, [out] * WORKERS, extra, "mw")
    try:
        _single(str(tmp_path / "one"), extra)  # meanwhile: the workers spend most of their time starting
        codes = _wait(procs, RUN_TIMEOUT_S)
    finally:
        _kill(procs)
    assert codes == [0] * WORKERS, [_log(tmp_path, "mw", i)[-2000:] for i in range(WORKERS)]
    _assert_same_training(out, tmp_path / "one")
    # Only the chief wrote the folder; the other worker's temporary copy is gone.
    assert sorted(os.listdir(out)) == [
        ".lock",
        "checkpoints",
        "config.json",
        "meta_loss.keras",
        "metrics.jsonl",
    ]
    assert int((tmp_path / "mw" / ".lock").read_text()) == procs[0].pid
    assert [os.listdir(tmp_path / f"tmp{i}") for i in range(WORKERS)] == [[]] * WORKERS


def _kill_worker_1_after_first_checkpoint(tmp_path, out: str, extra: list[str]) -> str:
    """Launch both workers, ``kill -9`` worker 1 once the chief's first checkpoint exists; returns
    the last stderr line of worker 0, which must have exited by itself within LOST_TIMEOUT_S."""
    procs = _launch(tmp_path, [out] * WORKERS, extra, "cut")
    try:
        index = os.path.join(out, "checkpoints", "checkpoint")
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not os.path.exists(index) and time.monotonic() < deadline and procs[0].poll() is None:
            time.sleep(0.02)
        assert os.path.exists(index), _log(tmp_path, "cut", 0)[-2000:]
        os.kill(procs[1].pid, signal.SIGKILL)
        # a hang guard, not a speed check: TimeoutExpired fails the test if worker 0 never exits
        code = procs[0].wait(timeout=LOST_TIMEOUT_S)
    finally:
        _kill(procs)
    assert not os.path.exists(os.path.join(out, "meta_loss.keras")), "killed too late to test anything"
    lines = [line for line in _log(tmp_path, "cut", 0).splitlines() if line.strip()]
    assert code == 1, lines[-20:]
    return lines[-1]


def test_a_killed_worker_makes_the_other_fail_in_one_line(tmp_path):
    out = str(tmp_path / "cut")
    last = _kill_worker_1_after_first_checkpoint(
        tmp_path, out, ["--meta-steps", "5000", "--checkpoint-every", "2", "--no-eval"]
    )
    assert last.startswith("ml3tf: error: worker 1 of 2 lost at meta-step "), last
    assert "relaunch all workers with the same command to resume from the last checkpoint (meta-step " in last
    assert "Traceback" not in _log(tmp_path, "cut", 0)


@pytest.mark.slow
def test_relaunched_workers_resume_and_end_as_one_process(tmp_path):
    extra = ["--meta-steps", "60", "--checkpoint-every", "5", "--no-eval"]
    out = str(tmp_path / "cut")
    last = _kill_worker_1_after_first_checkpoint(tmp_path, out, extra)
    assert "worker 1 of 2 lost" in last, last
    procs = _launch(tmp_path, [out] * WORKERS, extra, "again")
    try:
        codes = _wait(procs, RUN_TIMEOUT_S)
    finally:
        _kill(procs)
    assert codes == [0] * WORKERS, [_log(tmp_path, "again", i)[-2000:] for i in range(WORKERS)]
    _single(str(tmp_path / "one"), extra)
    _assert_same_training(out, tmp_path / "one")


@pytest.mark.slow
def test_workers_that_see_different_checkpoints_refuse_to_start(tmp_path):
    extra = ["--meta-steps", "2", "--checkpoint-every", "2", "--no-eval"]
    _single(str(tmp_path / "a"), extra)  # the chief's folder holds a checkpoint, worker 1's not
    procs = _launch(tmp_path, [str(tmp_path / "a"), str(tmp_path / "b")], ["--meta-steps", "4"], "apart")
    try:
        codes = _wait(procs, RUN_TIMEOUT_S)
    finally:
        _kill(procs)
    assert codes == [2, 2]
    for i in range(WORKERS):
        assert "filesystem all workers share" in _log(tmp_path, "apart", i).splitlines()[-1]


def _with_tf_config(monkeypatch, value):
    if value is None:
        monkeypatch.delenv("TF_CONFIG", raising=False)
    else:
        monkeypatch.setenv("TF_CONFIG", value)


@pytest.mark.parametrize(
    ("value", "says"),
    [
        (None, "needs $TF_CONFIG"),
        ("{not json", "TF_CONFIG is not JSON"),
        ('{"task": {"type": "worker", "index": 0}}', "cluster.worker"),
        ('{"cluster": {"worker": ["nohost"]}, "task": {"type": "worker", "index": 0}}', "'host:port'"),
        ('{"cluster": {"worker": ["a:1", "a:1"]}, "task": {"type": "worker", "index": 0}}', "twice"),
        ('{"cluster": {"worker": ["a:1"], "ps": ["b:2"]}, "task": {"type": "worker", "index": 0}}', "'ps'"),
        ('{"cluster": {"worker": ["a:1"]}}', "task"),
        ('{"cluster": {"worker": ["a:1", "b:2"]}, "task": {"type": "worker", "index": 2}}', "task.index"),
    ],
)
def test_bad_tf_config_is_one_value_error(monkeypatch, capsys, value, says):
    _with_tf_config(monkeypatch, value)
    with pytest.raises(ValueError, match="TF_CONFIG") as caught:
        make_strategy("multi_worker")  # refused before TensorFlow's strategy is created
    assert says in str(caught.value) and "\n" not in str(caught.value)
    assert cli.main(["train", "sine", "--out-dir", "unused", "--strategy", "multi_worker"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("ml3tf: error: ") and "TF_CONFIG" in err and "\n" not in err


def test_tf_config_parses_and_lost_workers_are_named():
    spec = {"cluster": {"worker": ["10.0.0.1:2222", "[::1]:2223"]}, "task": {"type": "worker", "index": 1}}
    assert parse_tf_config(json.dumps(spec)) == (["10.0.0.1:2222", "[::1]:2223"], 1)
    # TensorFlow's words when a peer stopped heartbeating (seen from worker 0), and when the
    # chief's port refuses connections (seen from worker 1).
    assert _lost_worker("The following tasks are unhealthy: /job:worker/replica:0/task:1", 0) == 1
    assert _lost_worker("remote target /job:worker/replica:0/task:0 while calling", 1) == 0
    assert _lost_worker("no task named", 0) is None
    err = WorkerLostError(0, 2, 1, 7, "UnavailableError: gone").resuming_from(6)
    assert str(err) == (
        "worker 1 of 2 lost at meta-step 7 (UnavailableError: gone); relaunch all workers with the "
        "same command to resume from the last checkpoint (meta-step 6)"
    )


def test_multi_worker_after_tensorflow_started_is_one_value_error(tmp_path):
    code = (
        "import tensorflow as tf; tf.constant(1.0) + 1\n"
        "from ml3tf.distribute import make_strategy\n"
        "try:\n    make_strategy('multi_worker')\nexcept ValueError as e:\n    print('VE', e)\n"
    )
    env = dict(os.environ, TF_CONFIG=_tf_config(_free_ports(1), 0), TF_CPP_MIN_LOG_LEVEL="2")
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "VE strategy 'multi_worker' must be created before TensorFlow runs any op" in done.stdout
