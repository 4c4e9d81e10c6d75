"""The output policy of every command (``runtime.output_policy``): an output is never an input, never holds one,
never collides with another output, and goes to a folder that exists and is writable; all checked before any work.
The walk over ``pyproject.toml`` fails for a console script or a path option that the policy does not cover."""
import argparse
import importlib
import os
import re
import tempfile
import tomllib
from pathlib import Path
from unittest import mock

import numpy as np
import pytest

from runtime.output_policy import ROLE, add_input, add_output
from runtime.sinks import MaskSink

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]

# Each console script with the inputs it needs: (argv, the input file that an output is pointed at). The files
# are junk bytes: the policy refuses before anything reads them.
BASE = {
    "offseg-info": None,  # writes nothing
    "offseg-ros2": None,  # writes nothing (topics only)
    "offseg-demo": (["--checkpoint", "IN/t.pth"], "IN/t.pth"),
    "offseg-reproduce": (["--pretrained-backbone", "IN/t.pth", "--dry-run"], "IN/t.pth"),
    "offseg-export": (["--checkpoint", "IN/t.pth"], "IN/t.pth"),
    "offseg-train": (["--checkpoint", "IN/t.pth"], "IN/t.pth"),
    "offseg-eval": (["--checkpoint", "IN/t.pth"], "IN/t.pth"),
    "offseg-run": (["--engine", "IN/m.onnx", "--video", "IN/v.mp4"], "IN/v.mp4"),
    "offseg-calibrate": (["--onnx", "IN/m.onnx", "--calib-data", "synthetic", "--output", "OUT/q.onnx"], "IN/m.onnx"),
    "offseg-validate": (["--engine", "IN/m.onnx", "--checkpoint", "IN/t.pth"], "IN/t.pth"),
    "offseg-fp16-check": (["--checkpoint", "IN/t.pth"], "IN/t.pth"),
    "offseg-bench": (["--checkpoint", "IN/t.pth"], "IN/t.pth"),
}


def entry_point(script: str):
    module_name, function = SCRIPTS[script].split(":")
    module = importlib.import_module(module_name)
    return module, getattr(module, function)


def parser_of(script: str) -> argparse.ArgumentParser:
    """The parser a console script hands to ``runtime.console.run`` (captured; nothing runs)."""
    module, main = entry_point(script)
    captured = []
    with mock.patch.object(module, "run", lambda _main, parser, argv, outputs=None: captured.append(parser) or 0):
        main([])
    assert captured, f"{script} does not parse through runtime.console.run, so the output policy never sees it"
    return captured[0]


def undeclared_path_options(parser: argparse.ArgumentParser) -> list[str]:
    """Options that take a path (type Path) or say they write, without an ``add_input``/``add_output`` mark."""
    return [action.option_strings[-1] for action in parser._actions
            if action.option_strings and action.nargs != 0 and getattr(action, ROLE, None) is None
            and (action.type is Path or re.search(r"\bwrite\b", action.help or "", re.IGNORECASE))]


def output_options(parser: argparse.ArgumentParser) -> list[str]:
    return [max(a.option_strings, key=len) for a in parser._actions
            if getattr(a, ROLE, None) == "output" and a.help != argparse.SUPPRESS]


def resolve(argv: list[str], tmp: Path) -> list[str]:
    return [str(tmp / a) if a.split("/")[0] in ("IN", "OUT") else a for a in argv]


@pytest.fixture
def inputs(tmp_path):
    (tmp_path / "IN").mkdir()
    (tmp_path / "OUT").mkdir()
    for name in ("t.pth", "m.onnx", "v.mp4"):
        (tmp_path / "IN" / name).write_bytes(b"input bytes that must survive " + name.encode())
    return tmp_path


def test_every_console_script_is_walked():
    assert sorted(BASE) == sorted(SCRIPTS), "a console script was added or removed: give it a BASE entry"


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_path_option_is_declared_to_the_policy(script):
    assert undeclared_path_options(parser_of(script)) == [], \
        f"{script}: mark these with runtime.output_policy.add_input / add_output"


def test_the_walk_catches_an_undeclared_option():
    parser = argparse.ArgumentParser()
    add_input(parser, "--checkpoint")
    add_output(parser, "--json")
    parser.add_argument("--plot", type=Path, help="a plot")
    parser.add_argument("--log", help="write the log here")
    parser.add_argument("--iters", type=int, help="iterations")
    assert undeclared_path_options(parser) == ["--plot", "--log"]


@pytest.mark.parametrize("script, option", [(s, o) for s in sorted(SCRIPTS) if BASE.get(s)
                                            for o in output_options(parser_of(s))])
def test_every_output_option_equal_to_an_input_is_refused(inputs, capsys, script, option):
    argv, protected = BASE[script]
    protected = inputs / protected
    before = protected.read_bytes()
    _, main = entry_point(script)
    assert main([*resolve(argv, inputs), option, str(protected)]) == 2
    err = capsys.readouterr().err
    assert "the input would be overwritten" in err and "Traceback" not in err, err
    assert protected.read_bytes() == before


@pytest.mark.parametrize("link", ["hard link", "symlink"])
@pytest.mark.parametrize("script, option", [("offseg-export", "--output"), ("offseg-eval", "--json"),
                                            ("offseg-bench", "--json"), ("offseg-calibrate", "--output")])
def test_an_output_linked_to_an_input_is_refused(inputs, capsys, script, option, link):
    argv, protected = BASE[script]
    protected = inputs / protected
    alias = inputs / "alias"
    os.link(protected, alias) if link == "hard link" else alias.symlink_to(protected)
    _, main = entry_point(script)
    assert main([*resolve(argv, inputs), option, str(alias)]) == 2
    assert "the input would be overwritten" in capsys.readouterr().err
    assert protected.read_bytes().startswith(b"input bytes")


@pytest.mark.parametrize("argv, message", [
    (["--image", "IN/s0.png", "--save-masks", "IN"], "--save-masks TMP/IN holds the input --image TMP/IN/s0.png"),
    (["--images", "IN", "--save-masks", "IN"], "--save-masks TMP/IN is the input --images TMP/IN"),
    (["--image", "IN/s0.png", "--summary", "IN/s0.png"], "--summary TMP/IN/s0.png is the input --image"),
    (["--images", "IN", "--summary", "IN/s0.png"], "--summary TMP/IN/s0.png is a file of the input folder --images"),
    (["--video", "IN/v.mp4", "--output", "OUT/o.mp4", "--summary", "OUT/o.mp4"],
     "--output TMP/OUT/o.mp4 and --summary TMP/OUT/o.mp4 are one path"),
    (["--video", "IN/v.mp4", "--rosbag-out", "OUT/bag", "--save-masks", "OUT/bag/masks"],
     "--rosbag-out TMP/OUT/bag and --save-masks TMP/OUT/bag/masks are one path"),
])
def test_run_outputs_never_overwrite_inputs_or_each_other(inputs, capsys, argv, message):
    from runtime.cli import main
    (inputs / "IN" / "s0.png").write_bytes(b"input bytes")
    assert main(["--engine", str(inputs / "IN/m.onnx"), *resolve(argv, inputs)]) == 2
    assert message.replace("TMP", str(inputs)) in capsys.readouterr().err
    assert (inputs / "IN" / "s0.png").read_bytes() == b"input bytes"


def test_a_work_dir_holding_the_starting_checkpoint_is_refused(inputs, capsys):
    from offseg.cli import train_main
    best = inputs / "IN" / "best.pth"
    best.write_bytes(b"weights")
    assert train_main(["--checkpoint", str(best), "--work-dir", str(inputs / "IN")]) == 2
    assert f"holds the input --checkpoint {best}" in capsys.readouterr().err


def unwritable_folder() -> Path:
    """A folder no file can be created in: a 0555 folder, or (as root, who may write there) /proc."""
    folder = Path(tempfile.mkdtemp())
    folder.chmod(0o555)
    try:
        with tempfile.NamedTemporaryFile(dir=folder):
            return Path("/proc")
    except OSError:
        return folder


@pytest.mark.parametrize("script, argv", [
    ("offseg-eval", ["--json", "FOLDER/s.json"]),
    ("offseg-bench", ["--json", "FOLDER/s.json"]),
    ("offseg-validate", ["--report", "FOLDER/report"]),
    ("offseg-fp16-check", ["--report", "FOLDER/report"]),
    ("offseg-calibrate", ["--sensitivity-json", "FOLDER/s.json"]),
    ("offseg-calibrate", ["--output", "FOLDER/q.onnx"]),
    ("offseg-train", ["--work-dir", "FOLDER/work"]),
    ("offseg-run", ["--summary", "FOLDER/s.json"]),
])
@pytest.mark.parametrize("folder", ["missing", "read-only"])
def test_an_output_into_a_missing_or_read_only_folder_fails_before_any_work(inputs, capsys, script, argv, folder):
    target = unwritable_folder() if folder == "read-only" else inputs / "missing" / "deeper"
    if folder == "missing" and script in ("offseg-validate", "offseg-fp16-check", "offseg-train"):
        pytest.skip("a folder output is created with its parents")
    base, _ = BASE[script]
    module, main = entry_point(script)
    real_run, called = module.run, []

    def spy(work, parser, argv, outputs=None):
        return real_run(lambda args: called.append(args) or work(args), parser, argv, outputs)

    with mock.patch.object(module, "run", spy):
        assert main([*resolve(base, inputs), *[a.replace("FOLDER", str(target)) for a in argv]]) == 2
    err = capsys.readouterr().err
    assert ("does not exist" if folder == "missing" else "cannot write in") in err and "Traceback" not in err, err
    assert called == []  # refused before the command's own function started


def test_mask_names_never_collide_and_the_count_is_the_files_written(tmp_path):
    sink = MaskSink(tmp_path / "masks")
    labels = np.zeros((4, 6), np.uint8)
    for name in ("x.jpg", "x.png", "x.jpg", "X.PNG", "x.png"):  # x.jpg.png's stem is x.jpg; X.PNG vs x.png
        sink.write(name, labels)
    written = sorted(p.name for p in (tmp_path / "masks").iterdir())
    assert len({n.casefold() for n in written}) == len(written) == sink.written == 5


def test_the_images_of_one_folder_give_one_mask_each(tmp_path):
    import cv2
    from runtime.sources import open_source
    images = tmp_path / "images"
    images.mkdir()
    for name in ("x.png", "x.jpg", "x.jpg.png", "Y.png", "y.PNG"):
        cv2.imwrite(str(images / name), np.full((8, 8, 3), 40, np.uint8))
    sink = MaskSink(tmp_path / "masks")
    for frame in open_source(images=images).frames():
        sink.write(frame.name, np.zeros((8, 8), np.uint8))
    assert sink.written == len(list((tmp_path / "masks").iterdir())) == 5


def test_the_policy_runs_before_the_command(inputs, capsys):
    from runtime.console import run
    parser = argparse.ArgumentParser()
    add_input(parser, "--checkpoint")
    add_output(parser, "--json")
    parser.add_argument("--debug", action="store_true")
    called = []
    protected = str(inputs / "IN" / "t.pth")
    assert run(lambda args: called.append(args) or 0, parser, ["--checkpoint", protected, "--json", protected]) == 2
    assert called == [] and "the input would be overwritten" in capsys.readouterr().err


def test_frames_of_another_shape_keep_their_aspect_in_the_video(tmp_path):
    """An image folder's portrait photo in a landscape video was stretched to the first frame's size."""
    import cv2
    from runtime.sinks import VideoSink, fitted_to_video

    first = np.full((120, 240, 3), 40, np.uint8)
    portrait = np.full((240, 120, 3), 220, np.uint8)
    fitted = fitted_to_video(portrait, (120, 240))
    assert fitted.shape == (120, 240, 3) and fitted is not portrait and fitted_to_video(first, (120, 240)) is first
    assert (fitted[:, 90:150] == 220).all() and (fitted[:, :90] == 0).all() and (fitted[:, 150:] == 0).all()
    sink = VideoSink(tmp_path / "v.avi", 10, first.shape[:2])
    for frame in (first, portrait):
        sink.write(frame)
    sink.close()
    capture = cv2.VideoCapture(str(tmp_path / "v.avi"))
    frames = [capture.read()[1] for _ in range(2)]
    capture.release()
    second = frames[1].astype(int)
    assert second[:, 100:140].mean() > 200 and second[:, :80].mean() < 20 and second[:, 160:].mean() < 20
