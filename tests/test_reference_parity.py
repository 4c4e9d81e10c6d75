"""Our OffSeg-T/B/L reproduce the official network: official-format checkpoints built from the pinned manifest
load with nothing missing and give the stored backbone features and logits to <= 1e-4."""
import hashlib

import numpy as np
import pytest
import torch

import reference
from offseg import build_model, get_spec, load_checkpoint
from offseg.checkpoint import official_to_ours

TOLERANCE = 1e-4
MODELS = ["offseg-t", "offseg-b", "offseg-l"]


def load_official(name, folder):
    """Save the reference weights as an official mmseg checkpoint, load it through our loader, then eval()."""
    path = folder / "official.pth"
    torch.save({"meta": {"mmseg_version": "1.2.2"}, "state_dict": reference.official_state_dict(name)}, path)
    model = build_model(name)
    load_checkpoint(model, path)
    return name, model.eval()


@pytest.fixture(scope="module", params=MODELS)
def loaded(request, tmp_path_factory):
    return load_official(request.param, tmp_path_factory.mktemp(request.param))


def test_features_and_logits_match_at_every_stored_size(loaded):
    name, model = loaded
    data = reference.expected(name)
    sizes = [key.removeprefix("input_") for key in data if key.startswith("input_")]
    assert sizes, "reference has no inputs"
    for size in sizes:
        x = torch.from_numpy(data[f"input_{size}"])
        with torch.no_grad():
            features = model.backbone(x)
            logits = model(x)
        for i, feature in enumerate(features):
            if f"feat{i}_{size}" in data:
                diff = np.abs(feature.numpy() - data[f"feat{i}_{size}"]).max()
                assert diff <= TOLERANCE, f"{name} feat{i} at {size}: max |diff| {diff:.2e}"
        diff = np.abs(logits.numpy() - data[f"logits_{size}"]).max()
        assert diff <= TOLERANCE, f"{name} logits at {size}: max |diff| {diff:.2e}"


def test_512_logits_match_regenerated_input(tmp_path):
    """Only offseg-t stores 512x512 logits; the README gives the input recipe and its checksum."""
    name, model = load_official("offseg-t", tmp_path)
    data = reference.expected(name)
    x = reference.input_512()
    assert hashlib.sha256(x.astype("<f4").tobytes()).hexdigest() == reference.INPUT_512_SHA256
    with torch.no_grad():
        logits = model(torch.from_numpy(x)).numpy()
    assert np.abs(logits - data["logits_512x512"]).max() <= TOLERANCE


@pytest.mark.parametrize("name", MODELS)
def test_attention_index_tables_equal_official(name):
    ours = build_model(name).state_dict()
    tables = {key.removeprefix("buffer:"): value for key, value in reference.expected(name).items()
              if key.startswith("buffer:") and key.endswith("attention_bias_idxs_seg")}
    assert tables
    for key, value in tables.items():
        assert np.array_equal(ours[official_to_ours(key)].numpy(), value), key


def test_float_buffers_come_from_the_checkpoint(tmp_path):
    """init_pos is read from the file: changing it in the checkpoint changes the logits."""
    state = reference.official_state_dict("offseg-t")
    x = torch.from_numpy(reference.expected("offseg-t")["input_256x256"])
    outputs = []
    for shift in (0.0, 0.3):
        state = dict(state)
        key = "decode_head.freqfusions.2.dysampler.init_pos"
        state[key] = state[key] + shift
        torch.save({"state_dict": state}, tmp_path / "c.pth")
        model = build_model("offseg-t")
        load_checkpoint(model, tmp_path / "c.pth")
        with torch.no_grad():
            outputs.append(model.eval()(x))
    assert (outputs[0] - outputs[1]).abs().max() > 1e-2


@pytest.mark.parametrize("name", MODELS)
def test_parameter_count_matches_reference_and_paper(name):
    from offseg.info import model_info
    info = model_info(name, input_size=(256, 256))
    manifest = reference.manifest(name)
    official = sum(int(np.prod(shape)) for key, shape, dtype in manifest["keys"]
                   if dtype == "float32" and key not in manifest["unused_in_forward"]["buffers"]
                   and "running_" not in key and not key.endswith(("hamming_lowpass", "hamming_highpass",
                                                                   "init_pos")))
    assert info.params_as_paper_counts == official
    assert abs(info.params_as_paper_counts / 1e6 - get_spec(name).paper_params_m) <= 0.1


# The paper's Table 2 (shared/PAPER.md): params (M), then dataset -> (mIoU, GFLOPs)
PAPER_TABLE_2 = {
    "offseg-t": (6.2, {"ade20k": (44.2, 5.3), "cityscapes": (78.9, 44.8), "coco-stuff164k": (41.9, 5.3)}),
    "offseg-b": (13.0, {"ade20k": (45.9, 10.3), "cityscapes": (80.5, 86.5), "coco-stuff164k": (44.3, 10.3)}),
    "offseg-l": (26.4, {"ade20k": (48.5, 17.1), "cityscapes": (81.6, 143.4), "coco-stuff164k": (46.0, 17.1)}),
}


@pytest.mark.parametrize("name", MODELS)
def test_the_paper_figures_are_registered_and_printed(name, capsys):
    from chain.cli import info_main
    params, figures = PAPER_TABLE_2[name]
    spec = get_spec(name)
    assert spec.paper_params_m == params
    assert {dataset: (r.miou, r.gflops) for dataset, r in spec.paper.items()} == figures
    assert spec.paper["cityscapes"].flops_size == (1024, 2048) and spec.paper["ade20k"].flops_size == (512, 512)
    assert info_main(["--model", name, "--input-size", "64", "64"]) == 0
    out = capsys.readouterr().out
    for dataset, (miou, gflops) in figures.items():
        assert any(line.split()[:3] == [dataset, "mIoU", f"{miou:.1f}"] and f"GFLOPs {gflops:6.1f}" in line
                   for line in out.splitlines()), dataset
    assert "arXiv 2508.08811" in out and "Table 2" in out and "no traceable source" not in out


def test_the_batchnorm_folded_model_matches_at_every_stored_size(loaded):
    """The inference copy (offseg-eval, the PyTorch backend) keeps the reference logits to <= 1e-4."""
    from offseg.models.fold import fold_batchnorm
    name, model = loaded
    folded = fold_batchnorm(model)
    data = reference.expected(name)
    for size in [key.removeprefix("input_") for key in data if key.startswith("input_")]:
        with torch.no_grad():
            logits = folded(torch.from_numpy(data[f"input_{size}"])).numpy()
        diff = np.abs(logits - data[f"logits_{size}"]).max()
        assert diff <= TOLERANCE, f"{name} folded logits at {size}: max |diff| {diff:.2e}"
