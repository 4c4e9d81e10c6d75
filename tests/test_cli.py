"""The PyTorch-side command lines, run in-process like a user would."""
import pytest

from chain.cli import demo_main, info_main


@pytest.mark.parametrize("name,params", [("offseg-t", "6.22"), ("offseg-b", "12.96"), ("offseg-l", "26.41")])
def test_info_reports_params_and_macs_next_to_the_paper(capsys, name, params):
    assert info_main(["--model", name]) == 0
    out = capsys.readouterr().out
    line = next(l for l in out.splitlines() if l.startswith("params + unused conv_seg"))
    measured, paper = map(float, line.split()[-2:])
    assert f"{measured:.2f}" == params and abs(measured - paper) <= 0.1
    conv = next(l for l in out.splitlines() if l.startswith("conv GMACs"))
    measured, paper = map(float, conv.split()[-2:])
    assert abs(measured - paper) <= 0.1  # the paper's GFLOPs are the conv MACs


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "missing.pth"], "missing.pth does not exist"),
    (["--checkpoint", "CHECKPOINT", "--model", "offseg-b"], "--model chooses the model the demo trains, and with "
     "--checkpoint it trains none (the checkpoint's own model is exported): drop --model offseg-b"),
])
def test_demo_user_mistakes_give_one_clear_line(tmp_path, capsys, argv, message):
    (tmp_path / "t.pth").write_bytes(b"")  # refused before it is read
    argv = [str(tmp_path / "t.pth") if a == "CHECKPOINT" else a for a in argv]
    assert demo_main(["--work-dir", str(tmp_path / "demo")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_demo_unwritable_workdir(tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert demo_main(["--work-dir", str(blocker / "sub")]) == 2
    err = capsys.readouterr().err
    assert "cannot write" in err and "Traceback" not in err


@pytest.mark.parametrize("argv, expected", [
    ([], ["offseg-b.onnx", "offseg-b.fp16.onnx"]),
    (["--model", "offseg-b"], ["offseg-b.onnx", "offseg-b.fp16.onnx"]),
    (["--format", "deepstream"], ["offseg-b-deepstream"]),
])
def test_default_export_names_follow_the_checkpoints_model(tmp_path, monkeypatch, argv, expected):
    """An offseg-b checkpoint without --model was written to offseg-t.onnx (and offseg-t-deepstream/)."""
    from unittest import mock

    import export.cli as export_cli
    from offseg import build_model, save_checkpoint
    checkpoint = save_checkpoint(build_model("offseg-b", 9), tmp_path / "b.pth", "offseg-b")
    monkeypatch.chdir(tmp_path)
    exported = []
    with mock.patch.object(export_cli, "_export", lambda args: exported.append(args) or 0):
        assert export_cli.main(["--checkpoint", str(checkpoint), "--fp16", *argv]) == 0
    outputs = [str(output.path) for output in export_cli._outputs(exported[0])]
    assert outputs == expected
