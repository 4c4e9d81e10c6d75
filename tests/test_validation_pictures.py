"""The validation picture: titled panels with the ground truth, a legend, and a readable empty disagreement panel."""
import cv2
import numpy as np

from calibration.report import side_by_side
from runtime.class_names import known_classes
from runtime.draw import LEGEND_MARGIN, annotate, draw_legend, legend_layout
from runtime.metrics import IGNORE_INDEX
from runtime.palettes import generated_palette

CLASSES = ("road", "sky", "building", "tree")


def _scene(h=60, w=80):
    image = np.full((h, w, 3), 120, np.uint8)
    truth = np.zeros((h, w), np.uint8)
    truth[: h // 2] = 1
    truth[:, -10:] = IGNORE_INDEX
    return image, truth


def _panels(picture, width):
    return [picture[:, i * width:(i + 1) * width] for i in range(5)]


def test_five_panels_at_the_image_size_with_a_legend_below():
    image, truth = _scene()
    prediction = truth.copy()
    prediction[truth == IGNORE_INDEX] = 2
    picture = side_by_side(image, truth, prediction, prediction, generated_palette(4), CLASSES)
    assert picture.shape[1] == 5 * 80 and picture.shape[0] > 60 + 22  # titles above, legend below
    truth_panel = _panels(picture, 80)[1][22:22 + 60]
    ignored = truth_panel[:, -10:].reshape(-1, 3)
    assert {tuple(v) for v in ignored} == {(20, 20, 20), (235, 235, 235)}  # hatched: no class colour looks like it


def test_the_engine_panel_names_its_file_and_the_legend_lists_every_class():
    image, truth = _scene()
    palette = generated_palette(4)
    plain = side_by_side(image, truth, truth, truth, palette, CLASSES)
    named = side_by_side(image, truth, truth, truth, palette, CLASSES, "model.int8-tensorrt.onnx (int8)")
    title = slice(0, 22), slice(3 * 80, 4 * 80)
    assert not np.array_equal(plain[title], named[title]) and np.array_equal(plain[22:], named[22:])
    legend = plain[22 + 60:].reshape(-1, 3)
    colours = {tuple(v) for v in legend}
    assert all(tuple(palette[c][::-1]) in colours for c in range(4))  # classes 2 and 3 are in no panel


def test_a_video_legend_of_a_150_class_model_stays_inside_the_frame():
    names = known_classes(150)
    palette = generated_palette(150)
    labels = np.repeat(np.arange(100, dtype=np.uint8), 30).reshape(60, 50)  # 100 classes, equal areas
    labels[:10] = 7  # the largest area comes first
    present = len(np.unique(labels))
    for height, width in ((360, 640), (120, 160)):
        legend = legend_layout(labels, palette, names, (height, width))
        shown = len(legend.colours)
        assert legend.lines[0] == names[7] and legend.lines[-1] == f"+{present - shown} more"
        assert legend.bottom <= height and 0 <= legend.left
        for line in legend.lines:
            right = legend.left + LEGEND_MARGIN + legend.row + cv2.getTextSize(
                line, cv2.FONT_HERSHEY_SIMPLEX, legend.scale, 1)[0][0]
            assert right <= width
    few = legend_layout(np.array([[3, 12], [40, 40]], np.uint8), palette, names, (1080, 1920))
    assert few.lines == [names[40], names[3], names[12]]  # whole names, no "more" row
    frame = np.zeros((360, 640, 3), np.uint8)
    draw_legend(frame, labels, palette, names)
    assert frame[:, :legend_layout(labels, palette, names, (360, 640)).left].max() == 0  # nothing left of the box


def test_an_empty_disagreement_panel_says_so_and_a_real_one_is_red():
    image, truth = _scene()
    same = side_by_side(image, truth, truth, truth, generated_palette(4), CLASSES)
    differ_panel = _panels(same, 80)[4][22:22 + 60]
    assert differ_panel.max() > 0 and not (differ_panel == (0, 0, 255)).all(axis=2).any()  # text, no red
    engine = truth.copy()
    engine[:5, :5] = 3
    changed = side_by_side(image, truth, truth, engine, generated_palette(4), CLASSES)
    red = (_panels(changed, 80)[4][22:22 + 60] == (0, 0, 255)).all(axis=2)
    assert red.sum() == 25


def test_the_timing_text_stays_left_of_the_legend_at_any_frame_size():
    names = known_classes(150)
    palette = generated_palette(150)
    text = "29.6 FPS  model 135 ms"
    for height, width in ((144, 256), (360, 640), (1080, 1920)):
        labels = np.repeat(np.arange(6, dtype=np.uint8), width // 6 + 1)[:width][None].repeat(height, 0)
        frame = np.full((height, width, 3), 90, np.uint8)
        plain = annotate(frame, labels, palette, 0.5, None, names)
        timed = annotate(frame, labels, palette, 0.5, text, names)
        columns = np.nonzero((plain != timed).any(axis=(0, 2)))[0]
        assert columns.size and columns.max() < legend_layout(labels, palette, names, (height, width)).left, height
        rows = np.nonzero((plain != timed).any(axis=(1, 2)))[0]
        assert rows.max() < 0.2 * height + 20  # at the top
