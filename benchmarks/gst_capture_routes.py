"""The two ways to read frames from GStreamer, measured in one run on the same H.264 file and pipeline:
OpenCV's GStreamer backend (``cv2.VideoCapture(pipeline, cv2.CAP_GSTREAMER)``, needs an OpenCV built with
GStreamer: Debian's ``python3-opencv``, JetPack's) and PyGObject's ``Gst`` with an appsink (``runtime.gstreamer``,
what ``offseg-run --capture gstreamer`` uses). Reports frames per second, process CPU time per frame (all threads)
and whether both routes give the same pixels.

Run with a Python whose cv2 has GStreamer, e.g. Debian's: ``/usr/bin/python3 benchmarks/gst_capture_routes.py``
(needs python3-opencv, python3-gi, gstreamer1.0-plugins-base/-good/-ugly, gstreamer1.0-libav).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cv2  # noqa: E402
import numpy as np  # noqa: E402

from runtime.gstreamer import FILE_APPSINK, TO_BGR, GstCapture, load_gst, quoted  # noqa: E402
from runtime.sinks import atomic_output  # noqa: E402


def make_video(path: Path, frames: int, size: tuple[int, int]) -> None:
    """An H.264 MP4 of ``videotestsrc``'s moving ball, written by gst-launch's elements in-process."""
    Gst = load_gst()
    pipeline = Gst.parse_launch(
        f"videotestsrc pattern=ball num-buffers={frames} ! video/x-raw,width={size[1]},height={size[0]},"
        f"framerate=30/1 ! videoconvert ! x264enc speed-preset=veryfast ! h264parse ! mp4mux ! "
        f"filesink location={quoted(str(path))}")
    pipeline.set_state(Gst.State.PLAYING)
    message = pipeline.get_bus().timed_pop_filtered(120 * Gst.SECOND, Gst.MessageType.EOS | Gst.MessageType.ERROR)
    pipeline.set_state(Gst.State.NULL)
    if message is None or message.type != Gst.MessageType.EOS:
        raise SystemExit(f"could not write the test video {path}")


def timed(read_all) -> tuple[dict, list[np.ndarray]]:
    wall, cpu = time.perf_counter(), time.process_time()
    frames = read_all()
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"frames": len(frames), "fps": len(frames) / wall, "cpu_ms_per_frame": 1000 * cpu / len(frames)}, frames


def read_opencv(launch: str) -> list[np.ndarray]:
    capture = cv2.VideoCapture(launch, cv2.CAP_GSTREAMER)
    if not capture.isOpened():
        raise SystemExit("OpenCV could not open the pipeline: is this OpenCV built with GStreamer?")
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return frames


def read_pygobject(launch: str) -> list[np.ndarray]:
    capture = GstCapture(load_gst(), launch, stall_seconds=10.0, cancelled=threading.Event())
    capture.start()
    frames = []
    while (read := capture.read())[0]:
        frames.append(read[1])
    capture.release()
    return frames


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--frames", type=int, default=300, help="frames in the test video (default 300)")
    parser.add_argument("--sizes", default="360x640,720x1280,1080x1920", help="HxW list (default %(default)s)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per route and size, best kept (default 3)")
    parser.add_argument("--json", type=Path, help="write the results here")
    args = parser.parse_args()
    if not re.search(r"GStreamer:\s+YES", cv2.getBuildInformation()):
        raise SystemExit(f"the OpenCV at {cv2.__file__} is built without GStreamer")
    rows = []
    with tempfile.TemporaryDirectory() as folder:
        for text in args.sizes.split(","):
            size = tuple(int(v) for v in text.split("x"))
            video = Path(folder) / f"{text}.mp4"
            make_video(video, args.frames, size)
            launch = f"filesrc location={quoted(str(video))} ! decodebin ! {TO_BGR} ! {FILE_APPSINK}"
            best, frames = {}, {}
            for _ in range(args.repeats):
                for route, read_all in (("opencv", read_opencv), ("pygobject", read_pygobject)):
                    result, frames[route] = timed(lambda: read_all(launch))
                    if route not in best or result["fps"] > best[route]["fps"]:
                        best[route] = result
            same = len(frames["opencv"]) == len(frames["pygobject"]) and all(
                np.array_equal(a, b) for a, b in zip(frames["opencv"], frames["pygobject"]))
            rows.append({"size": text, **{f"{route}_{k}": v for route, r in best.items() for k, v in r.items()},
                         "pygobject_over_opencv_fps": best["pygobject"]["fps"] / best["opencv"]["fps"],
                         "same_pixels": same})
    gst = load_gst()
    meta = {"cpu": os.cpu_count(), "python": sys.version.split()[0], "opencv": cv2.__version__,
            "gstreamer": gst.version_string(), "numpy": np.__version__, "date": time.strftime("%Y-%m-%d")}
    print(f"{meta}\n| size | OpenCV fps | PyGObject fps | ratio | OpenCV CPU ms/frame | PyGObject CPU ms/frame | "
          "same pixels |\n|---|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['size']} | {row['opencv_fps']:.0f} | {row['pygobject_fps']:.0f} | "
              f"{row['pygobject_over_opencv_fps']:.2f} | {row['opencv_cpu_ms_per_frame']:.2f} | "
              f"{row['pygobject_cpu_ms_per_frame']:.2f} | {row['same_pixels']} |")
    if args.json:
        with atomic_output(args.json) as tmp:
            tmp.write_text(json.dumps({"machine": meta, "rows": rows}, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
