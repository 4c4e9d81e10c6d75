"""The paper's protocol against independent re-implementations of mmseg / mmengine / mmcv behaviour, written here
from their documented semantics: test pipeline and inference, metrics, parameter rules, loss, augmentations,
padding, pretrained backbones and gradient accumulation."""
import logging

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import reference
from offseg import build_model
from offseg.checkpoint import official_to_ours, save_checkpoint
from offseg.cli import eval_main, train_main
from offseg.data.datasets import SegmentationDataset
from offseg.data.transforms import photometric_distortion
from offseg.evaluate import evaluate, mean_accuracy
from offseg.head_init import init_head_like_official
from offseg.inference import torch_infer
from offseg.losses import mmseg_cross_entropy
from offseg.optim import parameter_groups
from offseg.pretrained import load_pretrained_backbone
from offseg.protocol import TestProtocol, fixed_size, forward_window, protocol_logits
from offseg.recipes import accumulation_steps, run_line, with_recipe
from offseg.train import Collate, TrainConfig, train_step
from calibration.validate import compare, engine_infer, uint8_input
from runtime.backends import ModelInfo
from runtime.errors import OffsegError
from runtime.metrics import ConfusionMatrix
from runtime.preprocess import MEAN_RGB, STD_RGB

MEAN = torch.tensor([123.675, 116.28, 103.53]).view(1, 3, 1, 1)
STD = torch.tensor([58.395, 57.12, 57.375]).view(1, 3, 1, 1)


# --- mmseg's test pipeline and EncoderDecoder inference, re-implemented in torch --------------------------------

def mmcv_keep_ratio_resize(image, scale):
    """mmcv Resize(scale, keep_ratio=True): rescale_size, then cv2 bilinear."""
    h, w = image.shape[:2]
    factor = min(max(scale) / max(h, w), min(scale) / min(h, w))
    return cv2.resize(image, (int(w * factor + 0.5), int(h * factor + 0.5)), interpolation=cv2.INTER_LINEAR)


def mmseg_inputs(image):
    """SegDataPreProcessor: BGR -> RGB, (x - mean) / std; no padding at test time (no test_cfg)."""
    rgb = torch.from_numpy(np.ascontiguousarray(image[:, :, ::-1])).permute(2, 0, 1)[None].float()
    return (rgb - MEAN) / STD


def mmseg_encode_decode(model, inputs):
    with torch.no_grad():
        return F.interpolate(model(inputs), size=inputs.shape[-2:], mode="bilinear", align_corners=False)


def mmseg_slide(model, inputs, crop, stride):
    _, _, h_img, w_img = inputs.shape
    h_grids = max(h_img - crop[0] + stride[0] - 1, 0) // stride[0] + 1
    w_grids = max(w_img - crop[1] + stride[1] - 1, 0) // stride[1] + 1
    preds, count = None, torch.zeros(1, 1, h_img, w_img)
    for h_idx in range(h_grids):
        for w_idx in range(w_grids):
            y2, x2 = min(h_idx * stride[0] + crop[0], h_img), min(w_idx * stride[1] + crop[1], w_img)
            y1, x1 = max(y2 - crop[0], 0), max(x2 - crop[1], 0)
            logits = mmseg_encode_decode(model, inputs[:, :, y1:y2, x1:x2])
            preds = torch.zeros(1, logits.shape[1], h_img, w_img) if preds is None else preds
            preds += F.pad(logits, (x1, w_img - x2, y1, h_img - y2))
            count[:, :, y1:y2, x1:x2] += 1
    return preds / count


def mmseg_predict(model, image, mode, crop, stride, scale, size_divisor=None):
    """Logits (1, K, H, W) at the original size: test pipeline, (with a ``test_cfg`` size_divisor) stack_batch's
    bottom/right padding with 0, inference, postprocess_result's padding removal and resize."""
    inputs = mmseg_inputs(mmcv_keep_ratio_resize(image, scale) if scale else image)
    h, w = inputs.shape[-2:]
    if size_divisor:
        inputs = F.pad(inputs, (0, -w % size_divisor, 0, -h % size_divisor), value=0.0)
    logits = mmseg_slide(model, inputs, crop, stride) if mode == "slide" else mmseg_encode_decode(model, inputs)
    return F.interpolate(logits[:, :, :h, :w], size=image.shape[:2], mode="bilinear", align_corners=False)


@pytest.fixture(scope="module")
def tiny():
    torch.manual_seed(0)
    return build_model("offseg-t", 7).eval()


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    base = cv2.resize(rng.integers(0, 255, (h // 8 + 1, w // 8 + 1, 3), dtype=np.uint8), (w, h))
    return np.clip(base.astype(np.int16) + rng.integers(-20, 20, (h, w, 3)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("size, mode, scale", [((150, 200), "slide", (512, 128)), ((192, 128), "whole", None),
                                               ((150, 100), "whole", (512, 128))])
def test_protocol_matches_mmseg_test_pipeline(tiny, size, mode, scale):
    """ADE20K's pipeline at quarter size (resize to (512, 128) keep-ratio, slide 128/96) to keep the test fast."""
    image = _image(*size)
    expected = mmseg_predict(tiny, image, mode, (128, 128), (96, 96), scale)[0].permute(1, 2, 0).numpy()
    ours = protocol_logits(image, torch_infer(tiny), TestProtocol(mode, (128, 128), (96, 96), scale))
    assert ours.shape == expected.shape
    assert np.abs(ours - expected).max() < 1e-3
    assert (ours.argmax(2) == expected.argmax(2)).mean() > 0.999


def test_pascal_context_pads_the_whole_image_before_the_windows(tiny):
    """SegNeXt's Pascal Context pipeline at a reduced size: resized to 120x160, padded to 128x160, then windows of
    96 every 64 placed on the padded image (on the unpadded one they would start at row 24, not 32)."""
    image = _image(150, 200)
    expected = mmseg_predict(tiny, image, "slide", (96, 96), (64, 64), (160, 160), size_divisor=32)
    ours = protocol_logits(image, torch_infer(tiny), TestProtocol("slide", (96, 96), (64, 64), (160, 160), 32))
    assert np.abs(ours - expected[0].permute(1, 2, 0).numpy()).max() < 1e-3


def test_windows_are_padded_only_where_the_model_needs_it(tiny):
    x = mmseg_inputs(_image(96, 64))
    ours = forward_window(torch_infer(tiny), x.numpy())
    assert np.abs(ours - mmseg_encode_decode(tiny, x)[0].permute(1, 2, 0).numpy()).max() < 1e-4  # as it is
    x = mmseg_inputs(_image(100, 100))  # the official model cannot run 100 (25 / 2 is not whole): pad with 0
    with torch.no_grad():
        padded = F.interpolate(tiny(F.pad(x, (0, 28, 0, 28), value=0.0)), size=(128, 128), mode="bilinear")
    ours = forward_window(torch_infer(tiny), x.numpy())
    assert np.abs(ours - padded[0, :, :100, :100].permute(1, 2, 0).numpy()).max() < 1e-4


def test_a_fixed_size_engine_follows_the_protocol(tiny):
    """A static engine of the window size (ADE20K's protocol at quarter size) sees exactly the windows PyTorch
    sees; a smaller input is padded with the mean colour (normalized 0) and cropped; a uint8-input engine gets the
    original pixels back."""
    protocol = TestProtocol("slide", (128, 128), (96, 96), (512, 128))
    image = _image(60, 90, seed=3)
    engine = engine_infer(torch_infer(tiny), ModelInfo("tiny", 7, (128, 128), "normalized", "logits"), protocol)
    reference_logits = protocol_logits(image, torch_infer(tiny), protocol)
    assert np.abs(protocol_logits(image, engine, protocol) - reference_logits).max() < 1e-4
    pixels_to_probs = ModelInfo("tiny", 7, (128, 128), "float-rgb-0-255", "probs", output_layout="nhwc")
    mean, std = np.asarray(MEAN_RGB, np.float32)[:, None, None], np.asarray(STD_RGB, np.float32)[:, None, None]
    deepstream_like = engine_infer(lambda x: torch.from_numpy(torch_infer(tiny)((x - mean) / std)).softmax(1)
                                   .permute(0, 2, 3, 1).numpy(), pixels_to_probs, protocol)  # float 0-255 in, NHWC
    # probabilities are resized before the arg-max, logits on the reference side: a few border pixels may differ
    assert (protocol_logits(image, deepstream_like, protocol).argmax(2) == reference_logits.argmax(2)).mean() > 0.99
    seen = []
    recorder = fixed_size(lambda x: seen.append(x) or np.zeros((1, 7, 128, 128), np.float32), (512, 512), (480, 480))
    assert recorder(np.ones((1, 3, 320, 480), np.float32)).shape == (1, 7, 320, 480)
    assert seen[0].shape == (1, 3, 512, 512) and (seen[0][:, :, 320:] == 0).all()
    pixels = _image(32, 32)
    assert np.array_equal(uint8_input(lambda x: x)(mmseg_inputs(pixels).numpy())[0].transpose(1, 2, 0),
                          pixels[:, :, ::-1])


def test_validate_and_eval_share_the_protocol(tiny):
    dataset = SegmentationDataset("synthetic", None, "val", length=2, size=(64, 96))
    protocol = TestProtocol("slide", (64, 64), (48, 48), (192, 64))
    scores = evaluate(tiny, dataset, protocol, progress=False)
    result = compare(dataset, torch_infer(tiny), torch_infer(tiny), protocol, False, progress=False)
    assert np.array_equal(result.reference.matrix, result.engine.matrix) and result.agreement == 1.0
    assert np.allclose(result.reference.scores().iou, scores.iou, equal_nan=True)


# --- IoUMetric ----------------------------------------------------------------------------------------------

def mmseg_iou_metric(predictions, labels, num_classes, ignore_index=255):
    """IoUMetric: areas by torch.histc over [0, K-1] of the non-ignored pixels; mIoU, mAcc as nanmeans."""
    areas = torch.zeros(4, num_classes, dtype=torch.float64)
    for pred, label in zip(predictions, labels):
        pred, label = torch.from_numpy(pred).long(), torch.from_numpy(label).long()
        mask = label != ignore_index
        pred, label = pred[mask], label[mask]
        intersect = pred[pred == label]
        for i, values in enumerate((intersect, pred, label)):
            areas[i] += torch.histc(values.float(), bins=num_classes, min=0, max=num_classes - 1).double()
    intersect, pred_area, label_area = areas[:3]
    iou = intersect / (pred_area + label_area - intersect)
    acc = intersect / label_area
    return (100 * np.nanmean(iou.numpy()), 100 * np.nanmean(acc.numpy()),
            100 * float(intersect.sum() / label_area.sum()))


def _write(path, array):
    path.parent.mkdir(parents=True, exist_ok=True)
    assert cv2.imwrite(str(path), array)


@pytest.mark.slow
def test_eval_on_an_ade20k_folder_follows_the_test_pipeline(tmp_path, capsys, caplog):
    torch.manual_seed(1)
    model = build_model("offseg-t", 150).eval()
    ckpt = save_checkpoint(model, tmp_path / "t.pth", "offseg-t")
    root = tmp_path / "ade" / "ADEChallengeData2016"
    images, truths = [_image(120, 120, seed=5), _image(96, 128, seed=6)], []  # 1 and 2 windows at 512
    for i, image in enumerate(images):
        stored = np.random.default_rng(i).integers(0, 4, image.shape[:2]).astype(np.uint8)
        stored[:10, :10] = 200  # not a class (199 after reducing the zero label) and not the ignore index
        _write(root / "images" / "validation" / f"{i}.jpg", image)
        _write(root / "annotations" / "validation" / f"{i}.png", stored)
        truths.append(np.where(stored == 0, 255, stored.astype(np.int64) - 1))
    images = [cv2.imread(str(root / "images" / "validation" / f"{i}.jpg")) for i in range(2)]  # as decoded
    predictions = [mmseg_predict(model, im, "slide", (512, 512), (480, 480), (2048, 512))[0].argmax(0).numpy()
                   for im in images]
    for prediction, truth in zip(predictions, truths):
        prediction[truth >= 150] = 0  # those pixels are left out (we warn) rather than counted as mmseg does
    miou, macc, aacc = mmseg_iou_metric(predictions, [np.where(t >= 150, 255, t) for t in truths], 150)
    json_path = tmp_path / "scores.json"
    with caplog.at_level(logging.WARNING, logger="offseg"):
        assert eval_main(["--checkpoint", str(ckpt), "--dataset", "ade20k", "--data-root", str(tmp_path / "ade"),
                          "--json", str(json_path)]) == 0
    out = capsys.readouterr().out
    assert "resize to 2048x512 keep-ratio, slide 512x512 stride 480x480" in out and "mAcc" in out
    import json
    scores = json.loads(json_path.read_text())
    assert scores["mIoU"] == pytest.approx(miou, abs=0.05) and scores["mAcc"] == pytest.approx(macc, abs=0.05)
    assert scores["aAcc"] == pytest.approx(aacc, abs=0.05)
    warnings = [r.getMessage() for r in caplog.records if "outside the 150 classes" in r.getMessage()]
    # both files hold 199; images are read on 4 threads, so the first file read, either one, is the one named
    assert len(warnings) == 1 and ("0.png" in warnings[0] or "1.png" in warnings[0]) and "199" in warnings[0]
    assert "200 pixels with labels above the class count were left out" in out  # 10x10 in each file


def test_mean_accuracy_is_mmseg_macc():
    rng = np.random.default_rng(0)
    truth = rng.integers(0, 5, (2, 30, 40)).astype(np.uint8)
    truth[:, :4] = 255
    prediction = np.where(rng.random(truth.shape) < 0.6, truth, rng.integers(0, 6, truth.shape)).astype(np.uint8)
    confusion = ConfusionMatrix(6)  # class 5 never in the ground truth: accuracy NaN, out of the mean
    for p, t in zip(prediction, truth):
        confusion.update(p, t)
    miou, macc, aacc = mmseg_iou_metric(list(prediction), list(truth), 6)
    scores = confusion.scores()
    assert 100 * mean_accuracy(scores) == pytest.approx(macc) and 100 * scores.miou == pytest.approx(miou)


# --- mmengine's paramwise_cfg -------------------------------------------------------------------------------

OFFICIAL_BUFFERS = ("running_mean", "running_var", "num_batches_tracked", "attention_biases", "attention_bias_idxs",
                    "attention_bias_idxs_seg", "init_pos", "hamming_lowpass", "hamming_highpass")  # register_buffer


def official_module_tree(names):
    """nn.Modules nested like the official model, holding one parameter per official parameter name."""
    root = nn.Module()
    for name in names:
        *path, leaf = name.split(".")
        module = root
        for part in path:
            if not hasattr(module, part):
                module.add_module(part, nn.Module())
            module = getattr(module, part)
        module.register_parameter(leaf, nn.Parameter(torch.zeros(1)))
    return root


def mmengine_add_params(module, custom_keys, base_lr, base_wd, prefix=""):
    """DefaultOptimWrapperConstructor.add_params for custom_keys only: name -> (lr, weight decay)."""
    sorted_keys = sorted(sorted(custom_keys.keys()), key=len, reverse=True)
    settings = {}
    for name, _ in module.named_parameters(recurse=False):
        lr, wd = base_lr, base_wd
        for key in sorted_keys:
            if key in f"{prefix}.{name}":
                lr = base_lr * custom_keys[key].get("lr_mult", 1.0)
                wd = base_wd * custom_keys[key].get("decay_mult", 1.0)
                break
        settings[f"{prefix}.{name}" if prefix else name] = (lr, wd)
    for child_name, child in module.named_children():
        settings.update(mmengine_add_params(child, custom_keys, base_lr, base_wd,
                                            f"{prefix}.{child_name}" if prefix else child_name))
    return settings


@pytest.mark.parametrize("name", ["offseg-t", "offseg-b", "offseg-l"])
def test_parameter_groups_follow_mmengines_custom_keys(name):
    official_params = [k for k, _, _ in reference.manifest(name)["keys"] if k.rsplit(".", 1)[1] not in OFFICIAL_BUFFERS]
    config_keys = {"pos_block": dict(decay_mult=0.0), "norm": dict(decay_mult=0.0), "head": dict(lr_mult=10.0)}
    expected = mmengine_add_params(official_module_tree(official_params), config_keys, 6e-5, 0.01)
    expected = {official_to_ours(k): v for k, v in expected.items() if not k.startswith("decode_head.conv_seg.")}
    model = build_model(name, 150)
    ours = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in parameter_groups(model, 6e-5, 0.01):
        ours.update({names[id(p)]: (group["lr"], group["weight_decay"]) for p in group["params"]})
    assert ours.keys() == expected.keys()
    wrong = [k for k in ours if ours[k] != pytest.approx(expected[k])]
    assert not wrong, wrong[:5]
    talking = next(k for k in ours if "talking_head1" in k)
    assert ours[talking] == pytest.approx((6e-4, 0.01))  # "head" occurs in its name
    assert ours["head.pre.0.gn.weight"] == pytest.approx((6e-4, 0.01))  # "head" matches before "norm"
    assert ours[next(k for k in ours if k.endswith("attention_biases_seg"))] == pytest.approx((6e-5, 0.01))
    assert ours[next(k for k in ours if k.endswith("mlp.norm1.weight"))] == pytest.approx((6e-5, 0.0))


# --- CrossEntropyLoss(avg_non_ignore=False) -----------------------------------------------------------------

def test_loss_divides_by_all_pixels_like_mmseg():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 8, 8)
    labels = torch.randint(0, 5, (2, 8, 8))
    labels[:, :3] = 255  # 37.5% ignored
    log_p = logits.log_softmax(1)
    picked = log_p.gather(1, labels.clamp(max=4)[:, None])[:, 0]
    expected = -(picked * (labels != 255)).sum() / labels.numel()
    loss = mmseg_cross_entropy(logits, labels)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    assert loss.item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=255).item() * 0.625, rel=1e-5)
    with pytest.raises(OffsegError, match="up to 7 but the model has 5 classes"):
        mmseg_cross_entropy(logits, torch.full((2, 8, 8), 7))


# --- PhotoMetricDistortion ----------------------------------------------------------------------------------

class NumpyRandomApi:
    """numpy.random's module API (randint/uniform, as mmseg calls it) drawing from a Generator."""

    def __init__(self, rng):
        self.rng = rng

    def randint(self, low, high=None):
        return int(self.rng.integers(low, high))

    def uniform(self, low, high):
        return self.rng.uniform(low, high)


class MmsegPhotoMetricDistortion:
    """mmseg 1.x PhotoMetricDistortion, step by step as its methods are written, drawing from ``random``."""

    def __init__(self, random):
        self.random = random

    @staticmethod
    def convert(img, alpha=1, beta=0):
        return np.clip(img.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)

    def brightness(self, img):
        return self.convert(img, beta=self.random.uniform(-32, 32)) if self.random.randint(2) else img

    def contrast(self, img):
        return self.convert(img, alpha=self.random.uniform(0.5, 1.5)) if self.random.randint(2) else img

    def saturation(self, img):
        if not self.random.randint(2):
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 1] = self.convert(hsv[..., 1], alpha=self.random.uniform(0.5, 1.5))
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def hue(self, img):
        if not self.random.randint(2):
            return img
        hsv = cv2.cvtColor(img, cv2.COLOR_BGR2HSV)
        hsv[..., 0] = (hsv[..., 0].astype(int) + self.random.randint(-18, 18)) % 180
        return cv2.cvtColor(hsv, cv2.COLOR_HSV2BGR)

    def __call__(self, img):
        img = self.brightness(img)
        mode = self.random.randint(2)
        img = self.contrast(img) if mode == 1 else img
        img = self.hue(self.saturation(img))
        return self.contrast(img) if mode == 0 else img


def _coins(rng, count):
    return [int(rng.integers(2)) for _ in range(count)]


def test_photometric_distortion_equals_mmseg_with_the_same_draws():
    image = _image(24, 32, seed=9)
    for seed in range(300):
        ours = photometric_distortion(np.random.default_rng(seed), image.copy())
        theirs = MmsegPhotoMetricDistortion(NumpyRandomApi(np.random.default_rng(seed)))(image.copy())
        assert np.array_equal(ours, theirs), seed
    untouched = next(s for s in range(500) if _coins(np.random.default_rng(s), 5) in ([0, 1, 0, 0, 0], [0] * 5))
    assert np.array_equal(photometric_distortion(np.random.default_rng(untouched), image), image)  # nothing drawn


# --- padding of training crops, pretrained backbones, accumulation -----------------------------------------

def test_training_crops_are_padded_after_normalization():
    image, labels = _image(40, 50), np.ones((40, 50), np.uint8)
    images, targets = Collate((64, 64))([(image, labels), (_image(64, 64, 1), np.zeros((64, 64), np.uint8))])
    expected = F.pad(mmseg_inputs(image), (0, 14, 0, 24), value=0.0)
    assert images.shape == (2, 3, 64, 64) and torch.allclose(images[:1], expected, atol=1e-5)
    assert torch.equal(targets[0], F.pad(torch.ones(40, 50, dtype=torch.long), (0, 14, 0, 24), value=255))


def release_file(path, name, drop=None):
    """An EfficientFormerV2 ImageNet release: {'model': classifier state dict} with its classification keys."""
    manifest = reference.manifest(name)["keys"]
    rng = torch.Generator().manual_seed(0)
    state = {k[len("backbone."):]: torch.randn(s, generator=rng) if d == "float32" else torch.zeros(s, dtype=torch.long)
             for k, s, d in manifest if k.startswith("backbone.") and not k.endswith("_seg")}
    width = next(s for k, s, _ in manifest if k.startswith("backbone.network.6."))[0]
    state.update({"norm.weight": torch.ones(width), "norm.bias": torch.zeros(width), "norm.running_mean":
                  torch.zeros(width), "norm.running_var": torch.ones(width), "norm.num_batches_tracked":
                  torch.tensor(0), "head.weight": torch.zeros(1000, width), "head.bias": torch.zeros(1000),
                  "dist_head.weight": torch.zeros(1000, width), "dist_head.bias": torch.zeros(1000)})
    state.pop(drop, None)
    torch.save({"model": state}, path)
    return state


def test_pretrained_backbone_from_the_efficientformer_release(tmp_path, caplog):
    state = release_file(tmp_path / "eformer_s1_450.pth", "offseg-t")
    model = build_model("offseg-t", 150)
    head_before = {k: v.clone() for k, v in model.head.state_dict().items()}
    with caplog.at_level(logging.INFO, logger="offseg"):
        dropped = load_pretrained_backbone(model, tmp_path / "eformer_s1_450.pth")
    ours = model.state_dict()
    for key, value in state.items():
        if key not in dropped:
            assert torch.equal(ours[official_to_ours(f"backbone.{key}")], value), key
    assert all(torch.equal(v, head_before[k]) for k, v in model.head.state_dict().items())
    assert all((p == 0).all() for n, p in model.named_parameters() if n.endswith("attention_biases_seg"))
    assert {"head.weight", "dist_head.bias", "norm.running_var"} <= set(dropped)
    assert sum(k.endswith((".attention_biases", ".attention_bias_idxs")) for k in dropped) == 10  # 5 attentions
    line = next(r.getMessage() for r in caplog.records if "dropped" in r.getMessage())
    assert "\n" not in line and "dist_head.weight" in line and "network.4.7.token_mixer.attention_biases" in line
    release_file(tmp_path / "partial.pth", "offseg-t", drop="network.0.0.mlp.fc1.weight")
    with pytest.raises(OffsegError, match=r"missing: stages\.0\.blocks\.0\.mlp\.fc1\.weight"):
        load_pretrained_backbone(build_model("offseg-t", 150), tmp_path / "partial.pth")
    release_file(tmp_path / "eformer_l_450.pth", "offseg-l")
    with pytest.raises(OffsegError, match="does not fit"):
        load_pretrained_backbone(build_model("offseg-t", 150), tmp_path / "eformer_l_450.pth")


def test_accumulated_steps_equal_one_big_batch():
    torch.manual_seed(0)
    batches = [(torch.randn(2, 3, 16, 16), torch.randint(0, 4, (2, 16, 16))) for _ in range(2)]
    batches[1][1][:, :5] = 255
    models = [nn.Conv2d(3, 4, 1) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    scaler = torch.amp.GradScaler("cuda", enabled=False)
    for model, micro in zip(models, ([(torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches]))],
                                     batches)):
        train_step(model, micro, torch.optim.SGD(model.parameters(), lr=1.0), scaler, torch.device("cpu"), False)
    assert torch.allclose(models[0].weight, models[1].weight, atol=1e-6)
    config = with_recipe(TrainConfig(batch_size=2, accumulate=None), 1)
    assert accumulation_steps(config, 1) == 8 and accumulation_steps(config, 8) == 1
    assert accumulation_steps(TrainConfig(batch_size=3, accumulate=None), 1) == 6
    assert accumulation_steps(TrainConfig(dataset="cityscapes", batch_size=1, accumulate=None), 1) == 8
    assert run_line(config, 1, 8).startswith("effective batch 16 = 2 per step x 1 process(es) x 8")
    assert "FP32" in run_line(config, 1, 8) and not TrainConfig().amp
    assert "batch 3 (recipe 16)" in run_line(with_recipe(TrainConfig(batch_size=3), 1), 1, 1)
    assert "CARAFE fused form" in run_line(with_recipe(TrainConfig(carafe="fused"), 1), 1, 1)
    with pytest.raises(OffsegError, match="--carafe fast: choose from taps, unfold, fused"):
        with_recipe(TrainConfig(carafe="fast"), 1).validate()


def test_head_starts_from_the_official_initialisation():
    """mmcv ConvModule: kaiming normal (fan_out, ReLU); FreqFusion: Xavier-uniform convs, kernel generators
    N(0, 0.001); all biases 0."""
    torch.manual_seed(0)
    head = build_model("offseg-l", 150).head
    init_head_like_official(head)
    conv = head.align.conv.weight
    assert conv.std().item() == pytest.approx((2 / (conv.shape[0] * conv[0, 0].numel())) ** 0.5, rel=0.05)
    for fusion in head.freqfusions:
        for module in fusion.modules():
            if isinstance(module, nn.Conv2d):
                assert module.bias is None or (module.bias == 0).all()
        assert fusion.content_encoder.weight.std().item() == pytest.approx(0.001, rel=0.1)
        offset = fusion.dysampler.offset.weight
        bound = (6 / (offset.shape[1] * offset[0, 0].numel() + offset.shape[0] * offset[0, 0].numel())) ** 0.5
        assert offset.abs().max() <= bound and offset.std().item() == pytest.approx(bound / 3 ** 0.5, rel=0.1)


@pytest.mark.parametrize("argv, message", [
    (["--accumulate", "0"], "--accumulate must be at least 1 or 'auto'"),
    (["--eval-interval", "0"], "--eval-interval must be at least 1"),  # 0 once meant the recipe's, silently
    (["--checkpoint-interval", "0"], "--checkpoint-interval must be at least 1, got 0"),
    (["--pretrained-backbone", "missing.pth"], "missing.pth does not exist"),
])
def test_training_mistakes_give_one_clear_line(tmp_path, capsys, argv, message):
    assert train_main(["--iters", "1", "--workers", "0", "--work-dir", str(tmp_path / "w")] + argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
