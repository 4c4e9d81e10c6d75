"""Every command line speaks one language: each option explains itself and shows its default, old option names
still work, and ``--help`` answers without importing torch or onnx."""
import argparse
import importlib
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]


def _parser_of(command: str, monkeypatch) -> argparse.ArgumentParser:
    """The parser ``command`` builds, as its ``--help`` shows it."""
    module, function = ENTRY_POINTS[command].split(":")
    seen = []
    monkeypatch.setattr(argparse.ArgumentParser, "print_help", lambda parser, file=None: seen.append(parser))
    with pytest.raises(SystemExit):
        getattr(importlib.import_module(module), function)(["--help"])
    return seen[0]


@pytest.mark.parametrize("command", sorted(ENTRY_POINTS))
def test_every_option_has_help_and_shows_its_default(command, monkeypatch):
    parser = _parser_of(command, monkeypatch)
    assert "``" not in (parser.description or ""), "reST markup in the description"
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or not action.option_strings:
            continue
        assert action.help, f"{command} {action.option_strings[0]} has no help"
        assert "default:" not in action.help, f"{command} {action.option_strings[0]}: write (default X)"
        meaningful = action.default not in (None, False, argparse.SUPPRESS) and action.default not in ([], ())
        if meaningful and action.dest != "help":
            assert "default" in action.help, f"{command} {action.option_strings[0]} hides its default"


@pytest.mark.parametrize("command,old,new,value", [
    ("offseg-bench", "--size", "input_size", ["64", "96"]),
    ("offseg-bench", "--workdir", "work_dir", ["w"]),
    ("offseg-demo", "--workdir", "work_dir", ["w"]),
    ("offseg-export", "--calib-samples", "calib_images", ["7"]),
    ("offseg-calibrate", "--samples", "calib_images", ["7"]),
    ("offseg-calibrate", "--keep-float", "keep_fp32", ["FreqFusion0"]),
    ("offseg-calibrate", "--no-default-exclusions", "no_default_pins", []),
    ("offseg-fp16-check", "--images", "calib_images", ["7"]),
    ("offseg-eval", "--max-images", "eval_images", ["7"]),
    ("offseg-validate", "--max-images", "eval_images", ["7"]),
    ("offseg-run", "--batch", "batch_size", ["7"]),
    ("offseg-bench", "--batch", "batch_size", ["7"]),
])
def test_old_option_names_still_work_but_stay_out_of_help(command, old, new, value, monkeypatch):
    parser = _parser_of(command, monkeypatch)
    required = {"offseg-calibrate": ["--onnx", "m.onnx", "--calib-data", "d", "--output", "o.onnx"],
                "offseg-fp16-check": ["--checkpoint", "c.pth"], "offseg-eval": ["--checkpoint", "c.pth"],
                "offseg-validate": ["--engine", "m.onnx", "--checkpoint", "c.pth"],
                "offseg-run": ["--engine", "m.onnx", "--video", "v.mp4"]}.get(command, [])
    args = parser.parse_args(required + [old, *value])
    current = getattr(args, new)
    expected = {"store_true": True}.get("store_true" if not value else "", None)
    if expected is None:
        assert str(value[0]) in str(current), (current, value)
    else:
        assert current is True
    assert not re.search(rf"{re.escape(old)}(?![\w-])", parser.format_help())


def test_help_imports_neither_torch_nor_onnx():
    calls = "\n".join(f"    call('{spec}')" for spec in ENTRY_POINTS.values())
    code = f"""
import importlib, sys, contextlib, io
def call(spec):
    module, function = spec.split(':')
    with contextlib.redirect_stdout(io.StringIO()):
        try:
            getattr(importlib.import_module(module), function)(['--help'])
        except SystemExit:
            pass
if True:
{calls}
heavy = sorted(m for m in ('torch', 'onnx', 'onnxruntime', 'tensorrt', 'tensorrt_rtx') if m in sys.modules)
print(','.join(heavy))
"""
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True)
    assert result.stdout.strip() == "", f"--help imported {result.stdout.strip()}"


def test_torch_free_name_lists_match_the_registries():
    from offseg.data.datasets import LAYOUTS
    from offseg.names import DATASET_NAMES, MODEL_NAMES
    from offseg.zoo import MODELS
    assert MODEL_NAMES == tuple(MODELS) and DATASET_NAMES == tuple(LAYOUTS)


def test_known_library_noise_is_hidden_unless_debug():
    import warnings

    from runtime.console import add_common_options, run

    def noisy(args):
        warnings.warn("`isinstance(treespec, LeafSpec)` is deprecated, use `treespec.is_leaf()`", FutureWarning)
        return 0

    parser = argparse.ArgumentParser(prog="noisy")
    add_common_options(parser)
    for argv, shown in (([], False), (["--debug"], True)):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run(noisy, parser, argv) == 0
        assert any("LeafSpec" in str(w.message) for w in caught) == shown


def test_opencv_errors_are_left_to_our_sentence_unless_debug(tmp_path):
    """OpenCV logs a writer it cannot open ("[ERROR:0@0.1] ... Failed to initialize VideoWriter") where the command
    says so in its own words: hidden unless --debug (a fresh process: OpenCV reads its level when imported)."""
    script = f"""
import argparse, sys
from runtime.console import add_common_options, run
def main(args):
    import cv2
    writer = cv2.VideoWriter({str(tmp_path / "v.mp4")!r}, cv2.VideoWriter_fourcc(*"mp4v"), 15, (100000, 100000))
    print("opened", writer.isOpened())
    return 0
parser = argparse.ArgumentParser()
add_common_options(parser)
sys.exit(run(main, parser, sys.argv[1:]))
"""
    env = {key: value for key, value in __import__("os").environ.items() if not key.startswith("OPENCV_")}
    for argv, shown in (([], False), (["--debug"], True)):
        done = subprocess.run([sys.executable, "-c", script, *argv], capture_output=True, text=True, env=env,
                              cwd=Path(__file__).parents[1], timeout=120)
        assert "opened False" in done.stdout, done.stderr
        assert ("VideoWriter" in done.stderr) == shown, done.stderr


def test_given_names_the_options_set_away_from_their_defaults():
    """``console.given``, which every "this option would be ignored" check asks: list defaults, flags, an old
    name (whose hidden default must not count), a value equal to the default (not given)."""
    from runtime.console import add_hidden_aliases, given, run

    def parser():
        made = argparse.ArgumentParser()
        made.add_argument("--keep", action="append", default=[])
        made.add_argument("--size", type=int, nargs=2, default=(64, 64))
        made.add_argument("--count", type=int)
        made.add_argument("--flag", action="store_true")
        made.add_argument("--debug", action="store_true")
        add_hidden_aliases(made, {"--old-count": "--count"})
        return made

    seen = {}

    def main(args):
        seen["given"] = given(args, ("keep", "size", "count", "flag"))
        return 0

    for argv, expected in (([], []), (["--size", "64", "64"], []), (["--size", "64", "96"], ["--size"]),
                           (["--keep", "A", "--flag"], ["--keep", "--flag"]), (["--old-count", "3"], ["--count"])):
        assert run(main, parser(), argv) == 0
        assert seen["given"] == expected, argv
