"""offseg-train stopped and resumed: a stop lands between two steps, the checkpoint of iteration N holds exactly the
state after N steps, and the resumed run ends bit for bit where an uninterrupted one ends; SIGTERM to the whole
process group (DataLoader workers included) saves and exits 143."""
import multiprocessing
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import offseg.train
from offseg.checkpoint import read_training_state
from offseg.train import TrainConfig, train
from runtime.interrupts import STOP_SIGNALS, stop_signals

TINY = dict(dataset="synthetic", iters=4, batch_size=2, crop=(64, 64), scale=(96, 64), warmup_iters=1, lr=1e-3,
            log_interval=1, synthetic_size=(64, 96), synthetic_length=20, eval_interval=10 ** 6, eval_images=1,
            deterministic=True, workers=0)


@pytest.fixture
def signal_handlers():
    """This process's SIGINT/SIGTERM handlers, put back after the test (``stop_signals`` leaves them ignored after
    a signal)."""
    before = {number: signal.getsignal(number) for number in STOP_SIGNALS}
    yield
    for number, handler in before.items():
        signal.signal(number, handler)


def differences(a, b, where="") -> list[str]:
    """Where two checkpoint contents differ: tensors compared with torch.equal, everything else with ==."""
    if isinstance(a, torch.Tensor) or isinstance(b, torch.Tensor):
        same = isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b)
        return [] if same else [where]
    if isinstance(a, dict) and isinstance(b, dict):
        if a.keys() != b.keys():
            return [f"{where} keys"]
        return [d for key in a for d in differences(a[key], b[key], f"{where}/{key}")]
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)) and len(a) == len(b):
        return [d for index, (x, y) in enumerate(zip(a, b)) for d in differences(x, y, f"{where}[{index}]")]
    return [] if a == b else [where]


def training_parts(path: Path) -> dict:
    state = read_training_state(path)
    return {key: state[key] for key in ("state_dict", "optimizer", "scheduler", "scaler", "iteration", "rng")}


def interrupt_at_forward(monkeypatch, number: int, interrupt) -> None:
    """Call ``interrupt()`` in the middle of the ``number``-th forward of the training run (after the backbone,
    whose BatchNorms have then updated their statistics, before the head)."""
    real_step, forwards = offseg.train.train_step, [0]

    def hook(module, inputs):
        forwards[0] += 1
        if forwards[0] == number:
            interrupt()

    def train_step(model, *args, **kwargs):
        if not model.head._forward_pre_hooks:
            model.head.register_forward_pre_hook(hook)
        return real_step(model, *args, **kwargs)

    monkeypatch.setattr(offseg.train, "train_step", train_step)


@pytest.fixture(scope="module")
def straight(tmp_path_factory):
    """Uninterrupted runs of TINY, by (accumulate, workers)."""
    folder, runs = tmp_path_factory.mktemp("straight"), {}

    def run(accumulate: int, workers: int) -> dict:
        if (accumulate, workers) not in runs:
            work = folder / f"a{accumulate}w{workers}"
            train(TrainConfig(**{**TINY, "accumulate": accumulate, "workers": workers}, work_dir=str(work)),
                  progress=False)
            runs[accumulate, workers] = training_parts(work / "latest.pth")
        return runs[accumulate, workers]

    return run


@pytest.mark.slow
@pytest.mark.parametrize("accumulate, workers, forward", [(1, 0, 3), (2, 0, 6), (1, 2, 3)],
                         ids=["plain", "accumulate 2", "2 workers"])
def test_a_signal_mid_step_stops_after_it_and_the_resumed_run_is_bit_exact(tmp_path, monkeypatch, signal_handlers,
                                                                           straight, accumulate, workers, forward):
    """SIGINT in the middle of iteration 3's forward (its last micro-batch's with --accumulate 2): the step ends,
    latest.pth holds iteration 3, and resuming to 4 gives the uninterrupted run's weights, BatchNorm buffers,
    optimizer, schedule, GradScaler and random generators exactly."""
    config = {**TINY, "accumulate": accumulate, "workers": workers, "work_dir": str(tmp_path), "checkpoint_interval": 2}
    interrupt_at_forward(monkeypatch, forward, lambda: os.kill(os.getpid(), signal.SIGINT))
    earlier = set(multiprocessing.active_children())  # other tests' children in this pytest worker
    with pytest.raises(KeyboardInterrupt), stop_signals():  # as every CLI runs
        train(TrainConfig(**config), progress=False)
    assert not set(multiprocessing.active_children()) - earlier  # the DataLoader workers are gone
    assert read_training_state(tmp_path / "latest.pth")["iteration"] == 3
    monkeypatch.undo()
    train(TrainConfig(**config, resume=True), progress=False)
    assert differences(straight(accumulate, workers), training_parts(tmp_path / "latest.pth")) == []


@pytest.mark.slow
def test_an_interrupt_cutting_a_step_short_saves_nothing_of_it(tmp_path, monkeypatch, straight, caplog):
    """A KeyboardInterrupt raised inside a step (a caller without the CLIs' handlers): latest.pth stays the whole
    checkpoint of iteration 2, and resuming from it still ends exactly where the uninterrupted run does."""
    config = {**TINY, "work_dir": str(tmp_path), "checkpoint_interval": 2}

    def interrupt():
        raise KeyboardInterrupt

    interrupt_at_forward(monkeypatch, 3, interrupt)
    with pytest.raises(KeyboardInterrupt):
        train(TrainConfig(**config), progress=False)
    assert "inside iteration 3, whose step was cut short: nothing saved" in caplog.text
    assert read_training_state(tmp_path / "latest.pth")["iteration"] == 2
    monkeypatch.undo()
    train(TrainConfig(**config, resume=True), progress=False)
    assert differences(straight(1, 0), training_parts(tmp_path / "latest.pth")) == []


@pytest.mark.slow
def test_sigterm_to_the_process_group_saves_latest_and_exits_143(tmp_path):
    """SIGTERM to offseg-train's whole process group (``timeout``, systemd, ``docker stop``) with 2 DataLoader
    workers: the workers ignore it, the main process saves latest.pth at an iteration boundary and exits 143."""
    work = tmp_path / "w"
    command = [str(Path(sys.executable).with_name("offseg-train")), "--iters", "10000", "--batch-size", "2", "--crop",
               "64", "64", "--workers", "2", "--warmup-iters", "1", "--checkpoint-interval", "1", "--eval-interval",
               "100000", "--work-dir", str(work)]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               start_new_session=True)
    try:
        while not (work / "latest.pth").exists():  # a first iteration is done
            assert process.poll() is None, process.communicate()[1][-2000:]
            time.sleep(0.05)
        os.killpg(process.pid, signal.SIGTERM)
        _, stderr = process.communicate(timeout=600)
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode == 143, stderr[-2000:]
    assert "Traceback" not in stderr, stderr[-2000:]
    saved = re.search(r"terminated \(SIGTERM\): saved (\S+) at iteration (\d+) \(continue with --resume\)", stderr)
    assert saved and Path(saved[1]) == work / "latest.pth", stderr[-2000:]
    assert read_training_state(work / "latest.pth")["iteration"] == int(saved[2]) >= 1
    assert stderr.rstrip().endswith("terminated (SIGTERM)")
    with pytest.raises(ProcessLookupError):  # no worker outlives the command
        os.killpg(process.pid, 0)


def test_a_dataset_file_that_fails_in_a_worker_is_one_sentence_after_saving_the_last_whole_iteration(tmp_path):
    """A cut-short label met by a DataLoader worker at iteration 2: the worker's traceback used to be the message
    (and, once turned into a sentence, the run hung on its workers at exit). Now: the sentence alone, latest.pth
    of iteration 1, exit 2; once the file is fixed, --resume goes on."""
    import cv2
    import numpy as np

    from offseg.cli import train_main
    from offseg.train import SampleStream
    root, rng = tmp_path / "ds", np.random.default_rng(0)
    for split in ("train", "val"):
        for index in range(6):
            for kind, picture in (("images", rng.integers(0, 255, (64, 64, 3), np.uint8)),
                                  ("labels", rng.integers(0, 3, (64, 64), np.uint8))):
                (root / kind / split).mkdir(parents=True, exist_ok=True)
                cv2.imwrite(str(root / kind / split / f"{index}{'.jpg' if kind == 'images' else '.png'}"), picture)
    (root / "classes.txt").write_text("a\nb\nc\n")
    order = [index for _, (_, index) in zip(range(4), SampleStream(6, 0, 0))]
    label = root / "labels" / "train" / f"{order[2]}.png"  # read for iteration 2 (batch 2), not before
    whole = label.read_bytes()
    label.write_bytes(whole[:len(whole) // 2])
    work = tmp_path / "work"
    argv = ["--model", "offseg-t", "--dataset", "folder", "--data-root", str(root), "--work-dir", str(work),
            "--iters", "3", "--batch-size", "2", "--crop", "64", "64", "--seed", "0", "--eval-images", "1",
            "--checkpoint-interval", "100"]
    process = subprocess.run([str(Path(sys.executable).with_name("offseg-train")), *argv, "--workers", "2"],
                             capture_output=True, text=True, timeout=300)
    assert process.returncode == 2, process.stderr[-2000:]
    assert process.stderr.strip().splitlines()[-1] == f"error: label image {label} is cut short: it ends before its " \
        "last PNG chunk (an interrupted copy or download?)"
    assert "Traceback" not in process.stderr and "DataLoader worker" not in process.stderr
    assert f"saved {work / 'latest.pth'} at iteration 1 (continue with --resume once the data is fixed)" in \
        process.stdout + process.stderr
    assert read_training_state(work / "latest.pth")["iteration"] == 1
    label.write_bytes(whole)
    assert train_main([*argv, "--workers", "0", "--resume"]) == 0
    assert read_training_state(work / "latest.pth")["iteration"] == 3
