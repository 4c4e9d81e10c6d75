"""offseg-reproduce: the exact command sequence of one paper row, a report beside the paper's figure, resumable."""
import json
import signal
import sys
import threading
import time

import pytest
import torch

from chain import commands
from chain.cli import reproduce_main
from chain.commands import tensorrt_unavailable
from chain.reproduce import ReproduceReport, format_report
from offseg.checkpoint import read_file, read_training_state
from offseg.cli import train_main
from runtime.interrupts import Terminated, stop_signals


def test_dry_run_prints_the_sequence_on_n_gpus(tmp_path, capsys):
    work = tmp_path / "w"
    assert reproduce_main(["--dry-run", "--dataset", "cityscapes", "--model", "offseg-b", "--gpus", "4",
                           "--data-root", "data/cs", "--pretrained-backbone", "eformer_s2_450.pth",
                           "--work-dir", str(work)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == ("torchrun --standalone --nproc-per-node 4 --no-python offseg-train --model offseg-b --dataset "
                        f"cityscapes --work-dir {work}/train --data-root data/cs --pretrained-backbone "
                        "eformer_s2_450.pth")
    data = "--dataset cityscapes --data-root data/cs"
    assert lines[1] == f"offseg-eval --checkpoint {work}/train/latest.pth {data} --json {work}/eval-latest.json"
    assert lines[2] == f"offseg-eval --checkpoint {work}/train/best.pth {data} --json {work}/eval-best.json"
    assert lines[3] == (f"offseg-export --checkpoint {work}/train/latest.pth --output {work}/offseg-b.onnx "
                        "--input-size 1024 1024")
    engine = tensorrt_unavailable() is None
    assert len(lines) == 6 if engine else 5
    tested = f"{work}/offseg-b.fp16.plan" if engine else f"{work}/offseg-b.onnx"
    assert lines[-1] == (f"offseg-validate --engine {tested} --checkpoint {work}/train/latest.pth {data} "
                         f"--report {work}/validation")
    assert not work.exists()  # a dry run writes nothing
    assert reproduce_main(["--dry-run", "--work-dir", str(work)]) == 0
    printed = capsys.readouterr()
    assert printed.out.startswith("offseg-train --model offseg-t --dataset ade20k ")
    with_data = [line for line in printed.out.splitlines() if "--dataset" in line]
    assert len(with_data) == 4 and all("--data-root DATA_ROOT" in line for line in with_data)
    assert "DATA_ROOT" in printed.err


def test_train_args_may_be_one_flag(tmp_path, capsys):
    """argparse took a lone flag after --train-args for an option of offseg-reproduce ("expected one argument")."""
    assert reproduce_main(["--dataset", "synthetic", "--dry-run", "--work-dir", str(tmp_path), "--train-args",
                           "--amp"]) == 0
    assert capsys.readouterr().out.splitlines()[0].endswith("--work-dir " + str(tmp_path / "train") + " --amp")


@pytest.mark.parametrize("argv, message", [(["--gpus", "0"], "--gpus must be at least 1"),
                                           (["--dataset", "ade20k"], "--data-root is required for ade20k"),
                                           (["--train-args", '--iters 5 "'], "No closing quotation"),
                                           (["--eval-images", "0", "--dry-run"], "--eval-images must be at least 1"),
                                           (["--dataset", "synthetic", "--data-root", ".", "--dry-run"],
                                            "--data-root . is given but --dataset is synthetic"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args",
                                             "--iters 5 --dataset=cityscapes"],
                                            "--train-args --dataset: offseg-reproduce sets --dataset itself"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args", "--work-d=x"],
                                            "--train-args --work-dir: offseg-reproduce sets --work-dir itself"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args", "--workdir x"],
                                            "--train-args --work-dir: offseg-reproduce sets --work-dir itself"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args", "--iters 5 --bogus"],
                                            "--train-args: offseg-train does not take --bogus (offseg-train --help"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args", "--iters x"],
                                            "--train-args: argument --iters: invalid int value: 'x'"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args", "-h"],
                                            "--train-args: --help is not a training option"),
                                           (["--dataset", "synthetic", "--dry-run", "--train-args", "--resume"],
                                            "resumes its training by itself"),
                                           (["--dataset", "synthetic", "--dry-run", "--input-size", "100", "100"],
                                            "--input-size 100 100: both sides must be positive multiples of 32")])
def test_reproduce_mistakes_give_one_clear_line(tmp_path, capsys, argv, message):
    assert reproduce_main(["--work-dir", str(tmp_path)] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_report_puts_the_final_miou_beside_the_papers():
    report = ReproduceReport(model="offseg-t", dataset="ade20k", paper_miou=44.2, final_miou=43.7, best_miou=44.0,
                             best_iteration=144000, iterations=160000, protocol="resize to 2048x512 keep-ratio, "
                             "slide 512x512 stride 480x480", images=None, exported="offseg-t.fp16.plan",
                             exported_miou=43.65, exported_pytorch_miou=43.7, exported_within_bound=True,
                             recipe="recipe for offseg-t on ade20k", commands=["offseg-train ..."])
    text = format_report(report)
    assert "| latest.pth, iteration 160000 (final: the paper-comparable figure) | 43.70 | 44.2 | -0.50 |" in text
    assert "best.pth, iteration 144000" in text and "every validation image" in text
    assert "| offseg-t.fp16.plan (offseg-validate: the same protocol, windows at the exported size) | 43.65 | | -0.05 " \
        "vs PyTorch 43.70, within offseg-validate's bound |" in text
    text = format_report(ReproduceReport(**{**report.__dict__, "final_miou": 44.5, "exported_miou": 44.5,
                                            "exported_pytorch_miou": 44.5}))
    assert "| 44.50 | 44.2 | +0.30 |" in text and "| 44.50 | | +0.00 vs PyTorch 44.50" in text  # signed changes


@pytest.mark.parametrize("sent, raised, received", [(signal.SIGTERM, Terminated, "SIGTERM"),
                                                    (signal.SIGINT, KeyboardInterrupt, "SIGINT")])
def test_an_interrupt_is_forwarded_to_the_child(tmp_path, monkeypatch, sent, raised, received):
    """The child has a process group of its own: only the forwarding reaches it."""
    log = tmp_path / "child.txt"
    child = (f"import pathlib, signal, sys, time\nlog = pathlib.Path({str(log)!r})\n"
             "def stop(signum, frame):\n    log.write_text(signal.Signals(signum).name)\n    sys.exit(3)\n"
             "signal.signal(signal.SIGINT, stop)\nsignal.signal(signal.SIGTERM, stop)\nlog.write_text('ready')\n"
             "time.sleep(60)\n")
    monkeypatch.setattr(commands, "command_path", lambda name: sys.executable)

    def interrupt():
        while not log.is_file():
            time.sleep(0.05)
        signal.pthread_kill(threading.main_thread().ident, sent)

    threading.Thread(target=interrupt, daemon=True).start()
    started = time.monotonic()
    with pytest.raises(raised), stop_signals():
        commands.run_command("child", ["-c", child])
    assert log.read_text() == received and time.monotonic() - started < 30


def test_a_failed_step_names_its_exit_code_and_the_command_that_runs_it_alone(tmp_path, monkeypatch, capsys):
    """The child (here Python itself, refusing the step's options with exit code 2) says why; the chain says which
    step failed and how to run that step alone."""
    from runtime.errors import OffsegError
    monkeypatch.setattr(commands, "command_path", lambda name: sys.executable)
    with pytest.raises(OffsegError) as error:
        commands.build_engine(tmp_path / "m.onnx", tmp_path / "m.plan", "fp16")
    assert str(error.value) == ("building the fp16 engine failed (exit code 2; its own message is above); to run that "
                                f"step alone: offseg-export --onnx {tmp_path / 'm.onnx'} --format engine --output "
                                f"{tmp_path / 'm.plan'} --fp16")
    assert reproduce_main(["--dataset", "synthetic", "--model", "offseg-t", "--work-dir", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert "error: the train step failed (exit code 2; its own message is above); to run that step alone: " \
           "offseg-train --model offseg-t --dataset synthetic --work-dir " in err and "Traceback" not in err


@pytest.mark.slow
def test_reproduce_on_synthetic_scenes_resumes_runs_end_to_end_and_skips_what_is_current(tmp_path, capsys):
    work = tmp_path / "r"
    tiny = "--batch-size 2 --crop 64 64 --workers 0 --warmup-iters 1 --eval-images 1"
    assert train_main(["--iters", "1", "--work-dir", str(work / "train"), *tiny.split()]) == 0  # as if interrupted
    argv = ["--dataset", "synthetic", "--work-dir", str(work), "--eval-images", "1", "--train-args", f"--iters 2 {tiny}"]
    capsys.readouterr()
    assert reproduce_main(argv) == 0
    out = capsys.readouterr().out
    assert f"offseg-train --model offseg-t --dataset synthetic --work-dir {work}/train --iters 2 {tiny} --resume" in out
    assert read_training_state(work / "train" / "latest.pth")["iteration"] == 2
    report = json.loads((work / "report.json").read_text())
    final = json.loads((work / "eval-latest.json").read_text())
    assert report["final_miou"] == final["mIoU"] and report["paper_miou"] is None and report["iterations"] == 2
    same_weights = "[3/5] eval-best: skipped, best.pth holds latest.pth's weights (iteration 2), scored above"
    assert same_weights.replace("/5", "/6" if tensorrt_unavailable() is None else "/5") in out
    assert report["best_miou"] == final["mIoU"] and report["best_iteration"] == 2
    assert not (work / "eval-best.json").exists()
    assert report["exported_within_bound"] is True  # FP32 ONNX vs PyTorch through the same protocol
    markdown = (work / "report.md").read_text()
    assert "no figure in the paper" in markdown and "| best.pth, iteration 2 (the same weights as latest.pth) |" in \
        markdown
    assert reproduce_main(argv) == 0
    assert capsys.readouterr().out.count("current, skipped") == (5 if tensorrt_unavailable() is None else 4)
    best = read_file(work / "train" / "best.pth")  # as if the best validation mIoU had come at iteration 1
    torch.save({**best, "meta": {**best["meta"], "iteration": 1}}, work / "train" / "best.pth")
    assert reproduce_main(argv) == 0
    assert "offseg-eval --checkpoint " in capsys.readouterr().out
    report = json.loads((work / "report.json").read_text())
    assert report["best_iteration"] == 1
    assert report["best_miou"] == json.loads((work / "eval-best.json").read_text())["mIoU"]
    assert "| best.pth, iteration 1 (best validation mIoU; optimistic" in (work / "report.md").read_text()
