"""Procedural street scenes with exact labels: no files needed, deterministic per seed (numpy + OpenCV only).

Each scene has textured sky, buildings with window grids, vegetation, a road with lane marks, and objects
(vehicles, people, poles, signs) drawn far to near so near ones occlude far ones, scaled by distance. Colours
come from overlapping random ranges and every scene gets its own lighting (gain, gamma, a shadow gradient, sensor
noise), so colour alone does not separate the classes: shape and texture have to be learned.
``render_video`` pans and zooms a camera over one wide scene.
"""
from __future__ import annotations

import cv2
import numpy as np

CLASSES = ("sky", "building", "vegetation", "terrain", "road", "vehicle", "person", "pole", "sign")
# RGB: the Cityscapes colours of the same classes
PALETTE = np.array([(70, 130, 180), (70, 70, 70), (107, 142, 35), (152, 251, 152), (128, 64, 128), (0, 0, 142),
                    (220, 20, 60), (153, 153, 153), (220, 220, 0)], np.uint8)
LABEL = {name: i for i, name in enumerate(CLASSES)}
SCENE_SIZE = (256, 384)  # H W of the synthetic dataset's scenes unless asked otherwise
MIN_FRAME_SIDE = 32  # of a rendered video (python -m offseg.data.synthetic --size)


def _noise(rng: np.random.Generator, height: int, width: int, cell: int) -> np.ndarray:
    """Smooth noise in [-1, 1] with features about ``cell`` pixels wide: (H, W, 1)."""
    small = rng.uniform(-1, 1, (max(height // cell, 2), max(width // cell, 2))).astype(np.float32)
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)[..., None]


def _paint(image: np.ndarray, labels: np.ndarray, mask: np.ndarray, label: int, colour: np.ndarray,
           texture: np.ndarray | None = None) -> None:
    """Fill ``mask`` (uint8) in the image with ``colour`` (+ texture) and in the labels with ``label``."""
    region = mask.astype(bool)
    fill = np.broadcast_to(colour, image.shape).astype(np.float32)
    if texture is not None:
        fill = fill + texture
    image[region] = fill[region]
    labels[region] = label


def _colour(rng: np.random.Generator, low: float = 20, high: float = 235) -> np.ndarray:
    return rng.uniform(low, high, 3).astype(np.float32)


def _vehicle(rng, image, labels, x, y, scale):
    w, h = int(150 * scale), int(60 * scale)
    mask = np.zeros(labels.shape, np.uint8)
    cv2.rectangle(mask, (x - w // 2, y - h), (x + w // 2, y - h // 4), 1, -1)
    cv2.rectangle(mask, (x - w // 3, y - int(1.6 * h)), (x + w // 4, y - h), 1, -1)  # cabin
    for wx in (x - w // 3, x + w // 3):
        cv2.circle(mask, (wx, y - h // 4), max(h // 3, 2), 1, -1)
    shine = 40 * _noise(rng, *labels.shape, max(int(40 * scale), 4))
    _paint(image, labels, mask, LABEL["vehicle"], _colour(rng), shine)
    window = np.zeros_like(mask)
    cv2.rectangle(window, (x - w // 3 + 3, y - int(1.5 * h)), (x + w // 4 - 3, y - h - 2), 1, -1)
    image[window.astype(bool)] = _colour(rng, 10, 80)


def _person(rng, image, labels, x, y, scale):
    mask = np.zeros(labels.shape, np.uint8)
    body_h, body_w = int(70 * scale), max(int(14 * scale), 2)
    cv2.ellipse(mask, (x, y - body_h // 2), (body_w, body_h // 2), 0, 0, 360, 1, -1)
    cv2.circle(mask, (x, y - body_h - max(int(9 * scale), 2)), max(int(9 * scale), 2), 1, -1)
    stripes = 25 * np.sin(np.arange(labels.shape[0], dtype=np.float32) / max(3 * scale, 1))[:, None, None]
    _paint(image, labels, mask, LABEL["person"], _colour(rng), stripes)


def _pole_and_sign(rng, image, labels, x, y, scale, with_sign):
    mask = np.zeros(labels.shape, np.uint8)
    top = y - int(260 * scale)
    cv2.rectangle(mask, (x, top), (x + max(int(7 * scale), 2), y), 1, -1)
    _paint(image, labels, mask, LABEL["pole"], _colour(rng, 90, 170))
    if with_sign:
        mask[:] = 0
        r = max(int(22 * scale), 3)
        if rng.random() < 0.5:
            cv2.circle(mask, (x + 3, top), r, 1, -1)
        else:
            pts = np.array([[x + 3, top - r], [x + 3 - r, top + r], [x + 3 + r, top + r]], np.int32)
            cv2.fillPoly(mask, [pts], 1)
        _paint(image, labels, mask, LABEL["sign"], _colour(rng, 120, 255))


def _background(rng, image, labels, horizon):
    height, width = labels.shape
    sky = np.zeros(labels.shape, np.uint8)
    sky[:horizon] = 1
    gradient = np.linspace(30, -30, height, dtype=np.float32)[:, None, None]
    _paint(image, labels, sky, LABEL["sky"], _colour(rng, 90, 240), gradient + 12 * _noise(rng, height, width, 64))
    ground = 1 - sky
    _paint(image, labels, ground, LABEL["terrain"], _colour(rng, 30, 200), 30 * _noise(rng, height, width, 8))
    x = int(rng.uniform(-50, 0))
    while x < width:
        w, h = int(rng.uniform(50, 160)), int(rng.uniform(0.3, 0.9) * horizon)
        if rng.random() < 0.7:
            mask = np.zeros(labels.shape, np.uint8)
            cv2.rectangle(mask, (x, horizon - h), (x + w, horizon + 2), 1, -1)
            rows = (np.arange(height) % 14 < 7)[:, None] & (np.arange(width) % 12 < 6)[None, :]
            windows = 35 * rows[..., None].astype(np.float32)
            _paint(image, labels, mask, LABEL["building"], _colour(rng, 40, 200), windows)
        else:
            mask = np.zeros(labels.shape, np.uint8)
            for _ in range(6):
                cv2.circle(mask, (x + int(rng.uniform(0, w)), horizon - int(rng.uniform(0.2, 0.8) * h)),
                           int(rng.uniform(15, 40)), 1, -1)
            cv2.rectangle(mask, (x + w // 2 - 4, horizon - h // 3), (x + w // 2 + 4, horizon + 2), 1, -1)
            leaves = 45 * _noise(rng, height, width, 3)
            _paint(image, labels, mask, LABEL["vegetation"], _colour(rng, 20, 160), leaves)
        x += w + int(rng.uniform(-10, 30))


def _road(rng, image, labels, horizon):
    height, width = labels.shape
    left, right = width * rng.uniform(0.3, 0.45), width * rng.uniform(0.55, 0.7)
    road = np.array([[-width // 4, height], [width + width // 4, height], [right, horizon], [left, horizon]],
                    np.int32)
    mask = np.zeros(labels.shape, np.uint8)
    cv2.fillPoly(mask, [road], 1)
    asphalt = 18 * _noise(rng, height, width, 2)
    _paint(image, labels, mask, LABEL["road"], _colour(rng, 40, 150), asphalt)
    centre = (left + right) / 2
    for t in np.arange(0.05, 1, 0.12):  # dashed lane marks (still road)
        y0, y1 = int(horizon + (height - horizon) * t), int(horizon + (height - horizon) * (t + 0.05))
        half = max(int(1 + 6 * t), 1)
        cv2.rectangle(image, (int(centre) - half, y0), (int(centre) + half, y1), (235, 235, 235), -1)


def render_scene(seed: int, height: int = 512, width: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """One scene: (uint8 BGR image (H, W, 3), uint8 labels (H, W) indexing ``CLASSES``)."""
    rng = np.random.default_rng(seed)
    image = np.zeros((height, width, 3), np.float32)
    labels = np.zeros((height, width), np.uint8)
    horizon = int(height * rng.uniform(0.35, 0.55))
    _background(rng, image, labels, horizon)
    _road(rng, image, labels, horizon)
    objects = []
    for _ in range(rng.integers(3, 10)):
        y = int(rng.uniform(horizon + 5, height + 20))
        objects.append((y, int(rng.uniform(0, width)), rng.choice(["vehicle", "person", "pole", "sign"])))
    for y, x, kind in sorted(objects):  # far (small y) first: near objects occlude them
        scale = 0.25 + 1.1 * (y - horizon) / max(height - horizon, 1)
        if kind == "vehicle":
            _vehicle(rng, image, labels, x, y, scale)
        elif kind == "person":
            _person(rng, image, labels, x, y, scale)
        else:
            _pole_and_sign(rng, image, labels, x, y, scale, with_sign=kind == "sign")
    shadow = rng.uniform(0.55, 1.0) + (1 - rng.uniform(0.55, 1.0)) * np.linspace(0, 1, width, dtype=np.float32)
    lit = image * rng.uniform(0.6, 1.3) * (shadow[None, :, None] if rng.random() < 0.5 else 1.0)
    lit = 255 * (np.clip(lit, 0, 255) / 255) ** rng.uniform(0.7, 1.4) + rng.normal(0, 4, image.shape)
    return np.clip(lit, 0, 255).astype(np.uint8)[:, :, ::-1].copy(), labels


def render_video(seed: int, frames: int, height: int = 360, width: int = 640):
    """Yield (BGR frame, labels) of a camera panning and slowly zooming over one wide scene."""
    canvas, canvas_labels = render_scene(seed, int(height * 1.25), int(width * 2))
    for i in range(frames):
        t = i / max(frames - 1, 1)
        zoom = 1.0 + 0.2 * t
        h, w = int(canvas.shape[0] / 1.25 / zoom), int(width / zoom)
        x = int(t * (canvas.shape[1] - w))
        y = int((canvas.shape[0] - h) * (0.5 + 0.3 * np.sin(2 * np.pi * t)))
        crop = (slice(y, y + h), slice(x, x + w))
        yield (cv2.resize(canvas[crop], (width, height), interpolation=cv2.INTER_LINEAR),
               cv2.resize(canvas_labels[crop], (width, height), interpolation=cv2.INTER_NEAREST))


def write_video(path, seed: int = 0, frames: int = 60, height: int = 360, width: int = 640, fps: float = 15.0):
    """Render ``render_video`` to a video file (finalized atomically); returns the labels of every frame."""
    from runtime.sinks import VideoSink
    sink = VideoSink(path, fps, (height, width))
    labels = []
    try:
        for image, frame_labels in render_video(seed, frames, height, width):
            sink.write(image)
            labels.append(frame_labels)
    finally:
        sink.close()
    return labels


def main(argv: list[str] | None = None) -> int:
    """``python -m offseg.data.synthetic OUT.mp4``: a rendered street video to try ``offseg-run`` on."""
    import argparse

    from runtime.console import add_common_options, run
    from runtime.limits import check_at_least, check_image_pixels
    from runtime.output_policy import add_output
    from runtime.progress import counted
    from runtime.sinks import VideoSink

    parser = argparse.ArgumentParser(prog="python -m offseg.data.synthetic", description="Render a video of "
                                     "synthetic street scenes (a camera panning over one scene) to try offseg-run on.")
    add_output(parser, "output", help="video file (.mp4, .avi or .mkv)")
    parser.add_argument("--frames", type=int, default=60, help="frames to render")
    parser.add_argument("--size", type=int, nargs=2, default=(360, 640), metavar=("H", "W"), help="frame size")
    parser.add_argument("--fps", type=float, default=15.0, help="frames per second")
    parser.add_argument("--seed", type=int, default=0, help="scene seed (same seed, same video)")
    add_common_options(parser)

    def render(args) -> int:
        from runtime.errors import OffsegError
        check_at_least(("--frames", args.frames, 1))
        if min(args.size) < MIN_FRAME_SIDE:
            raise OffsegError(f"--size {args.size[0]} {args.size[1]}: both sides must be at least {MIN_FRAME_SIDE}")
        check_image_pixels(*args.size, f"--size {args.size[0]} {args.size[1]}")
        if not args.fps > 0:
            raise OffsegError(f"--fps must be above 0, got {args.fps:g}")
        VideoSink.check_target(args.output, args.fps)
        write_video(args.output, args.seed, args.frames, *args.size, fps=args.fps)
        print(f"wrote {args.output} ({counted(args.frames, 'frame')} of {args.size[0]}x{args.size[1]} at "
              f"{args.fps:g} fps)")
        return 0

    return run(render, parser, argv)


if __name__ == "__main__":
    raise SystemExit(main())
