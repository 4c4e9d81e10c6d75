"""The validation picture: titled panels with the ground truth, a legend, and a readable empty disagreement panel."""
import numpy as np

from calibration.report import side_by_side
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
    assert (truth_panel[:, -10:] == (96, 96, 96)).all()  # ignored pixels grey, not a class colour


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
