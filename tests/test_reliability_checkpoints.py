"""No file the project reads can run code: planted, foreign, legacy and mismatched checkpoints end in one sentence,
training state survives the weights-only loader, and no unsafe loader can creep back into the tree."""
import ast
import os
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch

from chain.cli import demo_main
from offseg import build_model, save_checkpoint
from offseg.checkpoint import build_from_checkpoint
from offseg.cli import train_main
from runtime.errors import OffsegError

ROOT = Path(__file__).resolve().parents[1]
TRAIN = ["--iters", "1", "--batch-size", "2", "--crop", "64", "64", "--workers", "0", "--warmup-iters", "1"]


class Exploit:
    """Pickles to a call of os.system: loading it with a full unpickler runs the command."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def plant(path, marker, legacy=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    content = {"format": "offseg", "state_dict": {}, "optimizer": Exploit(marker), "scheduler": {}, "iteration": 9,
               "rng": {}}
    torch.save(content, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True])
def test_a_planted_latest_pth_never_runs_on_resume(tmp_path, capsys, legacy):
    marker = tmp_path / "pwned"
    plant(tmp_path / "w" / "latest.pth", marker, legacy)
    assert train_main([*TRAIN, "--work-dir", str(tmp_path / "w"), "--resume"]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err
    assert "refused to unpickle code" in err and "Traceback" not in err


def test_resume_without_a_checkpoint_is_one_sentence_and_makes_no_folder(tmp_path, capsys):
    work_dir = tmp_path / "typo" / "w"
    assert train_main([*TRAIN, "--work-dir", str(work_dir), "--resume"]) == 2
    assert f"no checkpoint at {work_dir / 'latest.pth'}" in capsys.readouterr().err
    assert not (tmp_path / "typo").exists()


def test_resume_keeps_latest_pth_and_does_not_read_the_starting_weights_again(tmp_path, caplog):
    """--resume with --checkpoint (or --pretrained-backbone, as offseg-reproduce passes it on every re-run): the run's
    own weights are in latest.pth; the starting file is not loaded again (here it is no longer a checkpoint)."""
    import logging
    start = tmp_path / "start.pth"
    save_checkpoint(build_model("offseg-t", 9), start, "offseg-t")
    assert train_main([*TRAIN, "--work-dir", str(tmp_path / "w"), "--checkpoint", str(start)]) == 0
    start.write_bytes(b"replaced since")
    with caplog.at_level(logging.INFO):
        assert train_main([*TRAIN[:1], "2", *TRAIN[2:], "--work-dir", str(tmp_path / "w"), "--resume",
                           "--checkpoint", str(start)]) == 0
    assert f"its weights replace {start}, which is not read again" in caplog.text


def test_a_planted_latest_pth_never_runs_in_the_demo(tmp_path, capsys):
    marker = tmp_path / "pwned"
    plant(tmp_path / "demo" / "train" / "latest.pth", marker)
    assert demo_main(["--workdir", str(tmp_path / "demo"), "--quick"]) == 2
    assert not marker.exists() and "refused to unpickle code" in capsys.readouterr().err


@pytest.mark.parametrize("kind", ["weights only", "random bytes", "a list"])
def test_a_foreign_latest_pth_gives_one_sentence(tmp_path, capsys, kind):
    latest = tmp_path / "w" / "latest.pth"
    latest.parent.mkdir()
    if kind == "weights only":
        save_checkpoint(build_model("offseg-t", 3), latest, "offseg-t")
    elif kind == "random bytes":
        latest.write_bytes(np.random.default_rng(0).bytes(4096))
    else:
        torch.save([1, 2, 3], latest)
    assert train_main([*TRAIN, "--work-dir", str(tmp_path / "w"), "--resume"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert str(latest) in err


def test_training_state_round_trips_through_the_weights_only_loader(tmp_path):
    from offseg.train_state import rng_state, set_rng_state
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian is part of the state
    torch.save({"rng": rng_state()}, tmp_path / "s.pth")
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item())
    set_rng_state(torch.load(tmp_path / "s.pth", weights_only=True)["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.rand(), np.random.randn(), torch.rand(1).item()) == expected


def test_a_legacy_non_zip_checkpoint_loads(tmp_path):
    torch.manual_seed(0)
    model = build_model("offseg-t", 4)
    content = {"format": "offseg", "model": "offseg-t", "state_dict": model.state_dict(), "meta": {}}
    torch.save(content, tmp_path / "legacy.pth", _use_new_zipfile_serialization=False)
    loaded, name = build_from_checkpoint(tmp_path / "legacy.pth")
    assert name == "offseg-t" and all(torch.equal(v, loaded.state_dict()[k]) for k, v in model.state_dict().items())


def test_another_models_checkpoint_is_named_in_a_short_sentence(tmp_path):
    path = save_checkpoint(build_model("offseg-b", 19), tmp_path / "b.pth", "offseg-b")
    with pytest.raises(OffsegError) as caught:
        build_from_checkpoint(path, "offseg-t")
    message = str(caught.value)
    assert "this looks like an offseg-b checkpoint" in message and len(message) < 300


def test_a_mismatch_lists_at_most_five_keys(tmp_path):
    state = build_model("offseg-t", 3).state_dict()
    for key in list(state)[:40]:
        state[key] = torch.zeros(1)
    torch.save({"state_dict": state}, tmp_path / "c.pth")
    with pytest.raises(OffsegError) as caught:
        build_from_checkpoint(tmp_path / "c.pth", "offseg-t")
    message = str(caught.value)
    assert "40 wrong shape" in message and message.count("wrong shape: ") == 5 and message.endswith("...")


UNSAFE = {
    "weights_only=False": re.compile(r"weights_only\s*=\s*False"),
    "pickle/marshal/shelve/dill/joblib loads": re.compile(r"\b(c?pickle|marshal|dill|joblib)\.loads?\(|shelve\.open\("),
    "np.load(allow_pickle=True)": re.compile(r"allow_pickle\s*=\s*True"),
    "yaml.load without a safe loader": re.compile(r"yaml\.(unsafe_)?load\((?![^)]*SafeLoader)"),
    "torch.load without weights_only=True": re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"),
}
THE_ONE_LOADER = Path("offseg/checkpoint.py")  # every torch.load of a file we are given goes through it


def builtin_eval_calls(source: str) -> list[int]:
    """Line numbers of calls to the builtins eval/exec/compile (not methods such as ``model.eval()``)."""
    return [node.lineno for node in ast.walk(ast.parse(source)) if isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name) and node.func.id in ("eval", "exec", "compile")]


def python_files():
    skip = {".git", ".venv", "build", "dist", "__pycache__"}
    return [p for p in ROOT.rglob("*.py") if not skip & set(p.relative_to(ROOT).parts)]


def test_no_unsafe_loader_in_the_tree():
    """Fails when code that can unpickle or evaluate file content appears anywhere in the tree."""
    found = []
    for path in python_files():
        relative = path.relative_to(ROOT)
        if path == Path(__file__).resolve():
            continue  # holds the patterns as data; its own loads are weights_only=True
        source = path.read_text(encoding="utf-8")
        found += [f"{relative}:{number}: eval/exec/compile call" for number in builtin_eval_calls(source)]
        for number, line in enumerate(source.splitlines(), 1):
            code = line.split("#", 1)[0]
            found += [f"{relative}:{number}: {what}: {line.strip()}" for what, pattern in UNSAFE.items()
                      if pattern.search(code)]
            if "torch.load(" in code and relative != THE_ONE_LOADER:
                found.append(f"{relative}:{number}: torch.load outside {THE_ONE_LOADER}: {line.strip()}")
    assert not found, "unsafe loaders:\n" + "\n".join(found)


def test_the_scan_catches_what_it_looks_for():
    samples = ["torch.load(p, weights_only=False)", "pickle.load(f)", "np.load(p, allow_pickle=True)",
               "torch.load(p)", "yaml.load(stream)"]
    assert all(any(p.search(sample) for p in UNSAFE.values()) for sample in samples)
    safe = ["model.eval()", "torch.load(p, map_location='cpu', weights_only=True)", "np.load(p)",
            "yaml.load(s, Loader=yaml.SafeLoader)", "pickle.dumps(x)"]
    assert not any(p.search(sample) for p in UNSAFE.values() for sample in safe)
    assert builtin_eval_calls('x = eval(text)\nexec(open(p).read())\nmodel.eval()\n"call eval()"\n') == [1, 2]
