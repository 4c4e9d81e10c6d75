"""Hostile files are data, never instructions: every field read from a sidecar, cache, checkpoint, image or label
is checked where it is read, and sizes taken from files are bounded before anything is allocated."""
import json

import cv2
import numpy as np
import pytest

from runtime.errors import OffsegError

SIDECAR = {"format": "offseg-engine/1", "num_classes": 9, "onnx": {}, "precision": "fp16", "gpu": None,
           "tensorrt": {"module": "tensorrt", "version": "10.3.0", "version_compatible": False}, "dla_core": None}


@pytest.mark.parametrize("fields, message", [
    ({"dla_core": "1"}, r"wrong type of dla_core \(str\)"),
    ({"dla_core": True}, r"wrong type of dla_core \(bool\)"),
    ({"dla_core": 1.5}, r"wrong type of dla_core \(float\)"),
    ({"dla_core": -1}, r"dla_core -1 is not a DLA core \(0 or more, or null for the GPU\)"),
    ({"tensorrt": {"version_compatible": "yes"}}, r"wrong type of tensorrt\.version_compatible \(str\)"),
    ({"tensorrt": {"version": ["10.3.0"]}}, r"wrong type of tensorrt\.version \(list\)"),
], ids=["dla str", "dla bool", "dla float", "dla negative", "version_compatible str", "version list"])
def test_a_sidecar_field_of_the_wrong_type_or_range_is_one_sentence(tmp_path, fields, message):
    from runtime.engine_meta import read_sidecar
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text(json.dumps({**SIDECAR, **fields}))
    with pytest.raises(OffsegError, match=message):
        read_sidecar(engine)


def test_a_deeply_nested_sidecar_is_one_sentence(tmp_path):
    from runtime.engine_meta import read_sidecar
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text('{"format": "offseg-engine/1", "onnx": ' + "[" * 100000 + "]" * 100000 + "}")
    with pytest.raises(OffsegError, match="cannot read .*m.plan.json"):
        read_sidecar(engine)


def test_a_valid_sidecar_with_a_dla_core_is_read(tmp_path):
    from runtime.engine_meta import read_sidecar
    engine = tmp_path / "m.plan"
    engine.write_bytes(b"plan")
    (tmp_path / "m.plan.json").write_text(json.dumps({**SIDECAR, "dla_core": 1}))
    assert read_sidecar(engine)["dla_core"] == 1


def test_the_demo_reuses_an_engine_only_if_its_sidecar_names_this_onnx(tmp_path, monkeypatch):
    import hashlib

    import chain.commands as commands
    onnx_path, plan = tmp_path / "model.onnx", tmp_path / "model.fp16.plan"
    onnx_path.write_bytes(b"the exported graph")
    builds = []
    monkeypatch.setattr(commands, "run_command", lambda name, argv: builds.append(argv) or 0)

    def planted(sha256: str | None, precision: str = "fp16") -> None:
        plan.write_bytes(b"plan")
        onnx = {} if sha256 is None else {"file_sha256": sha256}
        (tmp_path / "model.fp16.plan.json").write_text(json.dumps({**SIDECAR, "onnx": onnx, "precision": precision}))

    this_onnx = hashlib.sha256(onnx_path.read_bytes()).hexdigest()
    for sha256, precision in ((None, "fp16"), ("0" * 64, "fp16"), (this_onnx, "int8")):
        planted(sha256, precision)
        commands.build_engine(onnx_path, plan, "fp16")
    assert len(builds) == 3 and all("--onnx" in argv and str(onnx_path) in argv for argv in builds)
    (tmp_path / "model.fp16.plan.json").write_text("[")  # damaged: rebuilt, not a traceback
    commands.build_engine(onnx_path, plan, "fp16")
    assert len(builds) == 4
    planted(this_onnx)
    assert commands.build_engine(onnx_path, plan, "fp16") == plan and len(builds) == 4


@pytest.mark.parametrize("content, message", [
    ({"classes": [1, 2, 3]}, r"c.pth: its class names are not a list of strings \(\[1, 2, 3\]\)"),
    ({"classes": "abc"}, r"its class names are not a list of strings \('abc'\)"),
    ({"classes": ["a", "b"]}, r"c.pth names 2 classes but its weights predict 3"),
    ({"meta": {"PALETTE": [[0, 0, 0], [1, 2], [3, 4, 5]]}}, r"its palette is not a list of 3 RGB colours"),
    ({"palette": [[0, 0, 0], [1, 2, 300], [3, 4, 5]]}, r"rows of 3 whole numbers 0-255\): \[\[0, 0, 0\], \[1, 2, 300"),
    ({"palette": [[0, 0, 0], [1, 2, "x"], [3, 4, 5]]}, "its palette is not"),
    ({"palette": [[0, 0, 0]] * 4}, "its palette is not a list of 3 RGB colours"),
    ({"meta": {"dataset_meta": {"palette": [[0.5, 0, 0]] * 3}}}, "its palette is not"),
], ids=["int names", "str", "too few names", "short row", "300", "str value", "4 rows", "float"])
def test_class_names_and_palettes_in_a_checkpoint_are_checked_where_read(content, message):
    from offseg.checkpoint import checkpoint_labels
    with pytest.raises(OffsegError, match=message):
        checkpoint_labels(content, 3, "checkpoint c.pth")


def test_good_checkpoint_labels_are_read():
    from offseg.checkpoint import checkpoint_labels
    content = {"classes": ["a ", "b"], "palette": [(0, 0, 0), [255, 1, 2]]}
    assert checkpoint_labels(content, 2) == (["a", "b"], [[0, 0, 0], [255, 1, 2]])
    assert checkpoint_labels({"classes": [], "meta": {}}, 2) == (None, None)


def test_an_export_from_a_checkpoint_with_integer_class_names_is_one_sentence(tmp_path, capsys):
    import torch

    from export.cli import main as export_main
    from offseg.checkpoint import read_file, save_checkpoint
    from offseg.zoo import build_model
    checkpoint = save_checkpoint(build_model("offseg-t", 3), tmp_path / "t.pth", "offseg-t")
    content = read_file(checkpoint)
    torch.save({**content, "classes": [0, 1, 2]}, checkpoint)
    assert export_main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "t.onnx")]) == 2
    err = capsys.readouterr().err
    assert "t.pth: its class names are not a list of strings ([0, 1, 2])" in err and "Traceback" not in err
    assert not (tmp_path / "t.onnx").exists()


@pytest.mark.parametrize("layout", ["ade20k", "folder"])
def test_a_16_bit_label_png_is_one_sentence_naming_the_file(tmp_path, layout):
    import cv2
    import numpy as np

    from offseg.data.datasets import SegmentationDataset
    images, labels = ((tmp_path / "images" / "validation", tmp_path / "annotations" / "validation")
                      if layout == "ade20k" else (tmp_path / "images" / "val", tmp_path / "labels" / "val"))
    images.mkdir(parents=True)
    labels.mkdir(parents=True)
    (tmp_path / "classes.txt").write_text("a\nb\nc\n")
    cv2.imwrite(str(images / "x.png"), np.zeros((8, 8, 3), np.uint8))
    cv2.imwrite(str(labels / "x.png"), np.full((8, 8), 1000, np.uint16))
    with pytest.raises(OffsegError, match=r"labels/val/x.png holds 16-bit labels \(uint16\)|annotations/validation/"
                                          r"x.png holds 16-bit labels \(uint16\); label images must be 8-bit"):
        SegmentationDataset(layout, tmp_path, "val").load(0)


@pytest.fixture
def calibration_case(tmp_path):
    """A toy FP32 graph, a ranges cache made for it (minmax, 2 images), and a second, different graph."""
    import onnx
    from test_quantize import shared_bias_model

    from calibration.quantize import QuantOptions, quantize_file
    source, other = tmp_path / "toy.onnx", tmp_path / "other.onnx"
    onnx.save(shared_bias_model(), source)
    model = shared_bias_model()
    model.graph.initializer[0].float_data[:] = []
    model.graph.initializer[0].raw_data = bytes(len(model.graph.initializer[0].raw_data))
    onnx.save(model, other)
    options = QuantOptions(target="onnxruntime", samples=2, cache=tmp_path / "ranges.json")
    quantize_file(source, tmp_path / "first.int8.onnx", "synthetic", options)
    return source, other, options


def test_a_calibration_cache_of_the_same_model_and_method_is_reused(calibration_case, monkeypatch):
    import calibration.quantize as quantize
    source, _, options = calibration_case
    monkeypatch.setattr(quantize, "calibrate_ranges", lambda *a: pytest.fail("the cache should have been reused"))
    assert quantize.quantize_file(source, source.with_name("again.onnx"), "synthetic", options).images == 0


@pytest.mark.parametrize("case, message", [
    ("another model", r"holds the ranges of another model \(not of this ONNX file"),
    ("another method", r"was made with calibration method minmax, this calibration uses entropy"),
    ("another input size", r"was made with input size 64 64, this calibration uses 32 32"),
    ("more images", r"was made from other calibration images \(another --calib-data or --calib-images"),
    ("other images", r"was made from other calibration images"),
    ("ORT's own cache", r"was not written by offseg-calibrate"),
    ("a JSON list", r"was not written by offseg-calibrate"),
    ("not JSON", r"is not a ranges file of offseg-calibrate \(Expecting"),
    ("damaged ranges", r"is damaged \(no ranges per tensor"),
    ("wrong range type", r"is damaged \("),
])
def test_a_calibration_cache_of_the_wrong_kind_is_one_sentence(calibration_case, case, message):
    from dataclasses import replace

    from calibration.quantize import quantize_file
    source, other, options = calibration_case
    cache = options.cache
    content = json.loads(cache.read_text())
    edits = {"another input size": lambda c: c["offseg"].update(input_size=[64, 64]),
             "ORT's own cache": lambda c: c.pop("offseg"),
             "damaged ranges": lambda c: c.update(data={"x": [1, 2]}),
             "wrong range type": lambda c: c.update(data={n: {"lowest": "low", "highest": "high"} for n in c["data"]})}
    if case in edits:
        edits[case](content)
    cache.write_text({"a JSON list": "[1]", "not JSON": "{"}.get(case, json.dumps(content)))
    run_on = other if case == "another model" else source
    run_options = {"another method": replace(options, method="entropy"),
                   "more images": replace(options, samples=3)}.get(case, options)
    data = "synthetic"
    if case == "other images":  # a folder of calibration images instead of the synthetic scenes
        data = source.parent / "images"
        data.mkdir()
        cv2.imwrite(str(data / "a.png"), np.full((32, 32, 3), 90, np.uint8))
    with pytest.raises(OffsegError, match=message):
        quantize_file(run_on, run_on.with_name("out.onnx"), data, run_options)
    assert not run_on.with_name("out.onnx").exists()


def png_header_only(path, height: int, width: int) -> None:
    """A PNG whose header declares ``height`` x ``width`` and whose data is one tiny row: a decompression bomb's
    header without its cost."""
    import struct
    import zlib
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = lambda kind, data: (struct.pack(">I", len(data)) + kind + data  # noqa: E731
                                + struct.pack(">I", zlib.crc32(kind + data)))
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 4))
                     + chunk(b"IEND", b""))


@pytest.fixture
def tiny_dynamic(tmp_path):
    from tiny_onnx import write_tiny_onnx
    return write_tiny_onnx(tmp_path / "tiny.onnx")


def with_metadata(onnx_path, out, **props):
    import onnx
    model = onnx.load(str(onnx_path))
    meta = {p.key: p.value for p in model.metadata_props}
    del model.metadata_props[:]
    onnx.helper.set_model_props(model, {**meta, **{f"offseg.{k}": v for k, v in props.items()}})
    onnx.save(model, str(out))
    return out


def test_an_image_above_the_pixel_limit_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    import cv2

    from runtime.limits import ImageTooLarge
    from runtime.sources import read_image
    bomb = tmp_path / "bomb.png"
    png_header_only(bomb, 12000, 12000)
    assert bomb.stat().st_size < 100
    decoded = []
    monkeypatch.setattr(cv2, "imread", lambda *a: decoded.append(a) or None)
    with pytest.raises(ImageTooLarge, match=r"bomb.png is 12000x12000 \(144 megapixels\), above the limit of 100 "
                                            r"megapixels \(runtime.limits.MAX_IMAGE_PIXELS\)"):
        read_image(bomb)
    assert not decoded


@pytest.mark.parametrize("suffix", [".png", ".jpg", ".bmp", ".webp", ".tif"])
def test_the_header_size_of_each_image_format_is_read(tmp_path, suffix):
    import cv2
    import numpy as np

    from runtime.image_header import image_header_size
    path = tmp_path / f"x{suffix}"
    cv2.imwrite(str(path), np.zeros((37, 53, 3), np.uint8))
    assert image_header_size(path) == (37, 53)


@pytest.mark.parametrize("kind", ["baseline", "progressive", "restarts"])
def test_a_cut_short_jpeg_is_told_from_a_whole_one_with_data_after_its_end(tmp_path, kind):
    """Cut anywhere (the end marker alone included), with an EXIF thumbnail whose own end marker comes early; whole,
    also with a motion photo's video or zero padding after the end marker."""
    from runtime.image_header import jpeg_ends_early, png_ends_early
    params = [cv2.IMWRITE_JPEG_PROGRESSIVE, 1] if kind == "progressive" else \
        [cv2.IMWRITE_JPEG_RST_INTERVAL, 1] if kind == "restarts" else []
    picture = np.random.default_rng(0).integers(0, 255, (120, 160, 3), np.uint8)
    whole = cv2.imencode(".jpg", picture, params)[1].tobytes()
    assert whole.count(b"\xff\xda") > (kind == "progressive") and (b"\xff\xd0" in whole) == (kind == "restarts")
    thumbnail = cv2.imencode(".jpg", picture[::8, ::8])[1].tobytes()
    app1 = b"Exif\x00\x00" + thumbnail
    with_exif = whole[:2] + b"\xff\xe1" + (len(app1) + 2).to_bytes(2, "big") + app1 + whole[2:]
    path = tmp_path / "x.jpg"
    for data, early in ((whole, False), (with_exif, False), (whole + b"\x00" * 300, False),
                        (whole + b"....ftypmp42" + bytes(range(256)) * 40, False),
                        *((whole[:int(len(whole) * share)], True) for share in (0.01, 0.3, 0.7, 0.99)),
                        (whole[:-2], True), (with_exif[:len(with_exif) - len(whole) // 2], True)):
        path.write_bytes(data)
        assert jpeg_ends_early(path) is early and png_ends_early(path) is False, (len(data), early)


def test_a_cut_short_png_is_one_sentence_and_a_cut_short_jpeg_a_warning_naming_it_once(tmp_path, caplog):
    """Images and label images alike."""
    from offseg.data.datasets import SegmentationDataset
    from runtime.image_header import jpeg_ends_early, png_ends_early
    from runtime.sources import read_image
    picture = np.random.default_rng(1).integers(0, 255, (90, 70, 3), np.uint8)
    whole = cv2.imencode(".png", picture)[1].tobytes()
    path = tmp_path / "x.png"
    for data, early in ((whole, False), (whole + b"data after IEND", False), (whole[:-12], True),
                        (whole[:len(whole) // 2], True), (whole[:20], True)):
        path.write_bytes(data)
        assert png_ends_early(path) is early and jpeg_ends_early(path) is False
        if early:
            with pytest.raises(OffsegError, match=f"image {path} is cut short: it ends before its last PNG chunk"):
                read_image(path)
    images, labels = tmp_path / "ds" / "images" / "val", tmp_path / "ds" / "labels" / "val"
    for folder in images, labels:
        folder.mkdir(parents=True)
    (tmp_path / "ds" / "classes.txt").write_text("a\nb\n")
    cv2.imwrite(str(images / "y.png"), picture)
    (labels / "y.png").write_bytes(cv2.imencode(".png", np.ones((90, 70), np.uint8))[1].tobytes()[:-12])
    with pytest.raises(OffsegError, match=f"label image {labels / 'y.png'} is cut short: it ends before its last"):
        SegmentationDataset("folder", tmp_path / "ds", "val").load(0)
    jpeg = tmp_path / "cut.jpg"
    jpeg.write_bytes(cv2.imencode(".jpg", picture)[1].tobytes()[:-400])
    first, again = read_image(jpeg), read_image(jpeg)
    assert first.shape == again.shape == (90, 70, 3)
    told = [r.getMessage() for r in caplog.records if "cut.jpg" in r.getMessage()]
    assert told == [f"image {jpeg} ends before its end-of-image marker (a cut-short copy or download?): its missing "
                    "part decodes as gray"]


def test_a_folder_run_skips_an_image_above_the_limit_and_counts_it(tiny_dynamic, tmp_path, capsys, caplog):
    import cv2
    import numpy as np

    from runtime.cli import main as run_main
    images = tmp_path / "images"
    images.mkdir()
    cv2.imwrite(str(images / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    png_header_only(images / "b_bomb.png", 12000, 12000)
    assert run_main(["--engine", str(tiny_dynamic), "--images", str(images), "--save-masks", str(tmp_path / "m"),
                     "--summary", str(tmp_path / "s.json"), "--no-progress"]) == 0
    assert [p.name for p in (tmp_path / "m").iterdir()] == ["a.png"]
    assert json.loads((tmp_path / "s.json").read_text())["skipped"] == 1
    assert "1 skipped (unreadable, too small or too large)" in capsys.readouterr().out
    skips = [r.getMessage() for r in caplog.records if "b_bomb.png" in r.getMessage()]
    assert len(skips) == 1 and "is 12000x12000 (144 megapixels), above the limit" in skips[0]
    png_header_only(tmp_path / "alone.png", 12000, 12000)
    assert run_main(["--engine", str(tiny_dynamic), "--image", str(tmp_path / "alone.png")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "alone.png is 12000x12000 (144 megapixels), above the limit" in err


def test_a_dynamic_model_whose_metadata_claims_a_huge_input_is_refused_before_allocation(tiny_dynamic, tmp_path):
    from runtime.backends import open_backend
    forged = with_metadata(tiny_dynamic, tmp_path / "forged.onnx", input_size="100000 100000")
    with pytest.raises(OffsegError, match=r"forged.onnx's input would be a tensor of \[1, 3, 100000, 100000\] "
                                          r"\(111.8 GiB\), above the 4 GiB a tensor may take"):
        open_backend(forged)


def test_a_graph_whose_static_output_is_huge_is_refused():
    from runtime.backends import ModelInfo
    info = ModelInfo.from_metadata({"offseg.model": "m", "offseg.num_classes": "9"}, "m.onnx")
    with pytest.raises(OffsegError, match=r"m.onnx's output would be a tensor of \[1, 9, 200000, 200000\] "
                                          r"\(1,341.1 GiB\)"):
        info.check_graph([1, 3, None, None], [1, 9, 200000, 200000], "m.onnx")


def test_a_batch_above_the_tensor_limit_is_one_sentence_before_it_is_built(tiny_dynamic, tmp_path, capsys,
                                                                             monkeypatch):
    import cv2
    import numpy as np

    import runtime.limits
    from runtime.cli import main as run_main
    cv2.imwrite(str(tmp_path / "a.png"), np.full((64, 64, 3), 90, np.uint8))
    monkeypatch.setattr(runtime.limits, "MAX_TENSOR_BYTES", 3 * 64 * 64 * 4 - 1)
    assert run_main(["--engine", str(tiny_dynamic), "--image", str(tmp_path / "a.png")]) == 2
    assert "the model input for frames of 64x64 would be a tensor of [1, 3, 64, 64]" in capsys.readouterr().err


@pytest.mark.parametrize("size", [("0", "0"), ("100000", "100000"), ("100", "100")])
def test_offseg_info_with_an_impossible_input_size_is_one_sentence(size, capsys):
    from chain.cli import info_main
    assert info_main(["--input-size", *size]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"error: --input-size {size[0]} {size[1]}")


@pytest.mark.parametrize("size, message", [("abc def", r"offseg.input_size 'abc def' is not 'H W'"),
                                           ("100000 100000", r"is 100000x100000 \(10000 megapixels\), above")])
def test_calibrating_a_model_whose_metadata_forges_its_input_size_is_one_sentence(tmp_path, size, message):
    import onnx
    from test_quantize import shared_bias_model

    from calibration.quantize import QuantOptions, quantize_file
    source = tmp_path / "toy.onnx"
    onnx.save(shared_bias_model(), source)
    with_metadata(source, source, input_size=size)
    with pytest.raises(OffsegError, match=message):
        quantize_file(source, tmp_path / "int8.onnx", "synthetic", QuantOptions(samples=1))
