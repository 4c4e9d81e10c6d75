"""Every write is checked: a full disk is one sentence naming the folder and the bytes needed and free, the exit
code is not 0 and the previous file is kept. The disk fills for real where a tmpfs can be mounted in a user
namespace, under a file-size limit (a real write failure without root), or by an ``os.write`` that fails with
ENOSPC after half the bytes (in-process)."""
import errno
import os
import resource
import shutil
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import cv2
import numpy as np
import pytest

from runtime import sinks
from runtime.errors import OffsegError
from runtime.sinks import MaskSink, VideoSink, write_file

ROOT = Path(__file__).resolve().parents[1]


class FullDiskOs:
    """``os`` for ``runtime.sinks`` alone: each ``write`` writes half its bytes, the last one fails as a full disk
    does."""

    def __getattr__(self, name):
        return getattr(os, name)

    @staticmethod
    def write(handle, data):
        if len(data) > 1:
            return os.write(handle, bytes(data[:len(data) // 2]))
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@pytest.fixture
def full_disk(monkeypatch):
    monkeypatch.setattr(sinks, "os", FullDiskOs())


def assert_disk_full_sentence(message: str, folder: Path, needed: int | None = None):
    assert f"the disk holding {folder} is full" in message and "bytes free" in message, message
    if needed is not None:
        assert f"{needed:,} bytes needed" in message
    assert "\n" not in message.strip() and "Traceback" not in message


def test_a_full_disk_keeps_the_previous_file_and_says_what_it_needs(tmp_path, full_disk):
    target = tmp_path / "scores.json"
    target.write_text("previous")
    data = "x" * 10_000
    with pytest.raises(OffsegError) as error:
        write_file(target, data)
    assert_disk_full_sentence(str(error.value), tmp_path, 10_000)
    assert target.read_text() == "previous" and os.listdir(tmp_path) == ["scores.json"]


def test_a_full_disk_inside_a_package_folder_names_the_final_path(tmp_path, full_disk):
    """A Triton repository or DeepStream package is built in a hidden temporary folder: the sentence names where
    the file was going, not that folder."""
    with pytest.raises(OffsegError) as error:
        with sinks.atomic_output(tmp_path / "repo", folder=True) as tmp:
            write_file(tmp / "offseg-t" / "1" / "model.onnx", "x" * 10_000)
    assert str(error.value).startswith(f"cannot write {tmp_path / 'repo' / 'offseg-t' / '1' / 'model.onnx'}: ")
    assert_disk_full_sentence(str(error.value), tmp_path / "repo" / "offseg-t" / "1", 10_000)
    assert "partial" not in str(error.value) and os.listdir(tmp_path) == []


def test_masks_on_a_full_disk_blame_the_disk_not_the_encoder(tmp_path, full_disk):
    sink = MaskSink(tmp_path / "masks")
    with pytest.raises(OffsegError) as error:
        sink.write("frame", np.zeros((20, 30), np.uint8))
    assert_disk_full_sentence(str(error.value), tmp_path / "masks")
    assert "encode" not in str(error.value) and sink.written == 0


def test_a_checkpoint_on_a_full_disk_is_one_sentence(tmp_path, full_disk):
    from offseg import build_model
    from offseg.checkpoint import save_checkpoint
    target = tmp_path / "t.pth"
    target.write_bytes(b"previous")
    with pytest.raises(OffsegError) as error:
        save_checkpoint(build_model("offseg-t", 3), target, "offseg-t")
    assert_disk_full_sentence(str(error.value), tmp_path)
    assert target.read_bytes() == b"previous"


@pytest.mark.slow
def test_training_on_a_full_disk_ends_in_one_sentence(tmp_path, full_disk, capsys):
    from offseg.cli import train_main
    code = train_main(["--iters", "1", "--batch-size", "2", "--crop", "64", "64", "--workers", "0",
                       "--warmup-iters", "1", "--work-dir", str(tmp_path / "w")])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err, err
    assert_disk_full_sentence(err.split("error: ")[-1], tmp_path / "w")
    assert not any(p.suffix == ".pth" for p in (tmp_path / "w").iterdir())


VIDEO_WRITER = textwrap.dedent("""
    import sys
    import numpy as np
    from runtime.sinks import VideoSink
    sink = VideoSink(sys.argv[1], 30.0, (240, 320))
    for i in range(40):
        sink.write(np.random.default_rng(i).integers(0, 255, (240, 320, 3), np.uint8))
    sink.close()
""")


def good_video(path: Path, frames: int) -> bytes:
    sink = VideoSink(path, 30.0, (48, 64))
    for i in range(frames):
        sink.write(np.full((48, 64, 3), 10 * i, np.uint8))
    sink.close()
    return path.read_bytes()


def frame_count(path: Path) -> int:
    capture = cv2.VideoCapture(str(path))
    try:
        return int(capture.get(cv2.CAP_PROP_FRAME_COUNT))
    finally:
        capture.release()


def limit_file_size():
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG instead of killing
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))


def test_a_video_that_could_not_be_finished_never_replaces_the_previous_one(tmp_path):
    target = tmp_path / "out.mp4"
    previous = good_video(target, 5)
    result = subprocess.run([sys.executable, "-c", VIDEO_WRITER, str(target)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, preexec_fn=limit_file_size)
    assert result.returncode != 0
    assert "the video encoder did not finish" in result.stderr and f"bytes free in {tmp_path}" in result.stderr
    assert target.read_bytes() == previous and frame_count(target) == 5
    assert os.listdir(tmp_path) == ["out.mp4"]


def test_a_video_onto_a_real_full_disk_keeps_the_previous_one(tmp_path):
    if not shutil.which("unshare"):
        pytest.skip("no unshare to mount a tmpfs without root")
    script = tmp_path / "full.sh"
    mount = tmp_path / "disk"
    mount.mkdir()
    script.write_text(textwrap.dedent(f"""
        mount -t tmpfs -o size=300k tmpfs {mount} || exit 77
        {sys.executable} -c 'import sys, pathlib; from tests.test_reliability_disk import good_video; good_video(pathlib.Path(sys.argv[1]), 3)' {mount}/out.mp4 || exit 3
        {sys.executable} -c '{VIDEO_WRITER}' {mount}/out.mp4
        echo "exit $?"
        {sys.executable} -c 'import sys; from tests.test_reliability_disk import frame_count; print("frames", frame_count(sys.argv[1]))' {mount}/out.mp4
        ls -a {mount}
    """))
    result = subprocess.run(["unshare", "-r", "-m", "sh", str(script)], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONPATH": str(ROOT)})
    if result.returncode == 77 or "unshare:" in result.stderr:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.strip()[:200]}")
    assert "exit 0" not in result.stdout and "frames 3" in result.stdout, result.stdout + result.stderr
    assert "the video encoder did not finish" in result.stderr and "0 bytes free" in result.stderr
    assert result.stdout.split()[-3:] == [".", "..", "out.mp4"]
