"""The inference pipeline: capture -> preprocess -> infer -> postprocess -> sinks, overlapped in threads.

A reader thread decodes frames, an inference thread fits them to the model (batching ``batch`` frames), runs the
backend and turns outputs into frame-sized label maps; the calling thread draws and writes (OpenCV windows must
live there). Bounded queues keep memory flat and frames in order. Ctrl-C or a sink asking to stop ends the run
cleanly: every sink is closed, so the output video is finalized up to the last frame written.
"""
from __future__ import annotations

import logging
import queue
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from .backends import Backend
from .errors import OffsegError
from .interrupts import describe, signals_held
from .limits import check_tensor_bytes
from .preprocess import FrameTooSmall, Geometry, fit_frame, logits_to_labels, to_model_input
from .progress import counted
from .sources import MAX_LISTED_SKIPS, Frame, Source

log = logging.getLogger(__name__)

JOIN_SECONDS = 60  # longer than a slow inference, short of hanging forever
READ_STOP_SECONDS = 2.0  # a read blocked on a stalled mount, a device or a camera must not hold up a stop
STAGES = ("decode", "preprocess", "infer", "postprocess", "draw+write")
_END = object()


@dataclass
class Result:
    frame: Frame
    labels: np.ndarray  # (h, w) at the frame's size
    started: float  # perf_counter when the frame was decoded
    compute_ms: float = 0.0  # preprocess + inference + postprocess, per frame


@dataclass
class RunStats:
    frames: int = 0
    skipped: int = 0  # unreadable (counted by the source) or too small to fit the model input
    too_small: int = 0
    too_small_frames: list[dict] = field(default_factory=list)  # {"frame", "reason"}: the first MAX_LISTED_SKIPS
    skips: list[dict] = field(default_factory=list)  # at the end: the source's listed skips, then the too small
    seconds: float = 0.0
    stop_reason: str = ""
    error: str | None = None  # the error that ended the run, if one did
    stage_ms: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    latency_ms: list[float] = field(default_factory=list)

    @property
    def fps(self) -> float:
        return self.frames / self.seconds if self.seconds else 0.0

    def summary(self) -> dict:
        def describe(values):
            return {"mean": float(np.mean(values)), "p50": float(np.percentile(values, 50)),
                    "p95": float(np.percentile(values, 95))} if values else None
        return {"frames": self.frames, "skipped": self.skipped, "skipped_frames": self.skips,
                "seconds": round(self.seconds, 3),
                "fps": round(self.fps, 2), "stop_reason": self.stop_reason, "error": self.error,
                "latency_ms": describe(self.latency_ms),
                "stages_ms": {s: describe(self.stage_ms[s]) for s in STAGES if self.stage_ms.get(s)}}

    def table(self) -> str:
        lines = [f"{counted(self.frames, 'frame')} in {self.seconds:.1f} s: {self.fps:.1f} FPS"
                 + (f", {self.skipped} skipped (unreadable, too small or too large)" if self.skipped else "")
                 + (f"; stopped: {self.stop_reason}" if self.stop_reason else ""),
                 f"{'stage':<12} {'mean ms':>8} {'p50 ms':>8} {'p95 ms':>8}"]
        rows = [(s, self.stage_ms.get(s)) for s in STAGES] + [("end-to-end", self.latency_ms)]
        for name, values in rows:
            if values:
                lines.append(f"{name:<12} {np.mean(values):8.1f} {np.percentile(values, 50):8.1f} "
                             f"{np.percentile(values, 95):8.1f}")
        if self.latency_ms:
            lines.append("end-to-end = frame read to frame written: it includes the time a frame waits in the "
                         "queues behind earlier frames, so it exceeds the sum of the stages when the model is the "
                         "bottleneck")
        return "\n".join(lines)


class Pipeline:
    def __init__(self, backend: Backend, batch: int = 1, resize_policy: str = "letterbox", queue_size: int = 8):
        info = backend.info
        if batch < 1:
            raise OffsegError(f"--batch-size must be at least 1, got {batch}")
        if info.max_batch is not None and batch > info.max_batch:
            raise OffsegError(f"the model takes batches of at most {info.max_batch}; use --batch-size {info.max_batch} "
                              "or export with --dynamic (ONNX) / --max-batch (engine)")
        self.backend, self.batch, self.policy = backend, batch, resize_policy
        self.queue_size = max(queue_size, 2 * batch)

    def _labels(self, outputs: np.ndarray, geometries: list[Geometry]) -> list[np.ndarray]:
        info = self.backend.info
        outputs = info.planar(outputs)
        if info.output_kind == "labels":
            labels = outputs
        else:
            labels = logits_to_labels(outputs, geometries[0].input_size)
        return [g.labels_to_frame(item) for g, item in zip(geometries, labels)]

    def _fit(self, frames: list[tuple[Frame, float]], stats: RunStats) -> tuple[list, list]:
        """The frames that fit the model input and their (image, geometry); the others are skipped and counted."""
        kept, fitted = [], []
        for frame, started in frames:
            try:
                fitted.append(fit_frame(frame.image, self.backend.info.input_size, self.policy))
            except FrameTooSmall as error:
                log.warning("skipping frame %s: %s", frame.name, error)
                stats.too_small += 1
                if len(stats.too_small_frames) < MAX_LISTED_SKIPS:
                    stats.too_small_frames.append({"frame": frame.name, "reason": str(error)})
                continue
            kept.append((frame, started))
        return kept, fitted

    def _model_input(self, images: list[np.ndarray]) -> np.ndarray:
        info = self.backend.info
        return to_model_input(images, info.input_format, info.input_layout)

    def _infer_batch(self, frames: list[tuple[Frame, float]], stats: RunStats) -> list[Result]:
        t0 = time.perf_counter()
        frames, fitted = self._fit(frames, stats)
        if not frames:
            return []
        shapes = {im.shape for im, _ in fitted}
        itemsize = 1 if self.backend.info.input_format == "uint8-rgb" else 4
        for height, width, _ in shapes:  # frames of one size are one batch, of several sizes one at a time
            check_tensor_bytes((len(fitted) if len(shapes) == 1 else 1, 3, height, width), itemsize,
                               f"the model input for frames of {height}x{width}")
        t1 = time.perf_counter()
        if len(shapes) > 1:  # a dynamic model fed frames of different sizes: run them one by one
            outputs = [self.backend.infer(self._model_input([im])) for im, _ in fitted]
            t2 = time.perf_counter()
            labels = [self._labels(o, [g])[0] for o, (_, g) in zip(outputs, fitted)]
        else:
            outputs = self.backend.infer(self._model_input([im for im, _ in fitted]))
            t2 = time.perf_counter()
            labels = self._labels(outputs, [g for _, g in fitted])
        t3 = time.perf_counter()
        share = 1000 / len(frames)
        for stage, seconds in (("preprocess", t1 - t0), ("infer", t2 - t1), ("postprocess", t3 - t2)):
            stats.stage_ms[stage].extend([seconds * share] * len(frames))
        compute_ms = (t3 - t0) * share
        return [Result(frame, label, started, compute_ms) for (frame, started), label in zip(frames, labels)]

    def run(self, source: Source, consume: Callable[[Result], bool], stats: RunStats | None = None) -> RunStats:
        """Process every frame of ``source``; ``consume`` draws/writes one result and returns False to stop.

        The reader thread closes ``source`` when it is done. A stop does not wait more than ``READ_STOP_SECONDS``
        for a read that blocks (a stalled mount or device): the reader is left behind and the source stays open.
        """
        stats = stats or RunStats()
        stop = threading.Event()
        decoded: queue.Queue = queue.Queue(self.queue_size)
        results: queue.Queue = queue.Queue(self.queue_size)
        errors: list[BaseException] = []

        def put(q: queue.Queue, item) -> bool:
            while not stop.is_set():
                try:
                    q.put(item, timeout=0.1)
                    return True
                except queue.Full:
                    continue
            return False

        def get(q: queue.Queue):
            while not stop.is_set():
                try:
                    return q.get(timeout=0.1)
                except queue.Empty:
                    continue
            return _END

        def read() -> None:
            try:
                t = time.perf_counter()
                for frame in source.frames():
                    now = time.perf_counter()
                    stats.stage_ms["decode"].append(1000 * (now - t))
                    if not put(decoded, (frame, now)):
                        return
                    t = time.perf_counter()
            except BaseException as error:  # reported by the main thread
                errors.append(error)
            finally:
                put(decoded, _END)
                source.close()  # here, never while this thread may still be inside a read

        def infer() -> None:
            try:
                ended = False
                while not ended and not stop.is_set():
                    batch = []
                    while len(batch) < self.batch:
                        item = get(decoded)
                        if item is _END:
                            ended = True
                            break
                        batch.append(item)
                    for result in self._infer_batch(batch, stats) if batch else []:
                        if not put(results, result):
                            return
            except BaseException as error:
                errors.append(error)
            finally:
                put(results, _END)

        reader = threading.Thread(target=read, name="decode", daemon=True)
        inferer = threading.Thread(target=infer, name="infer", daemon=True)
        start = time.perf_counter()
        reader.start()
        inferer.start()
        try:
            while True:
                try:
                    item = results.get(timeout=0.1)
                except queue.Empty:
                    if errors:
                        break
                    continue
                if item is _END:
                    break
                with signals_held():  # a frame written is a frame counted, even when a signal comes in between
                    t = time.perf_counter()
                    keep_going = consume(item)
                    done = time.perf_counter()
                    stats.stage_ms["draw+write"].append(1000 * (done - t))
                    stats.latency_ms.append(1000 * (done - item.started))
                    stats.frames += 1
                if not keep_going:
                    stats.stop_reason = "stopped by the user"
                    break
        except KeyboardInterrupt as interrupt:
            stats.stop_reason = describe(interrupt)
            raise
        finally:
            stop.set()
            source.stop()
            if hasattr(self.backend, "cancel"):  # a backend that may wait (Triton's, for a server to come back)
                self.backend.cancel()
            inferer.join(timeout=JOIN_SECONDS)  # before the engine and the sinks close: no inference may be running
            reader.join(timeout=READ_STOP_SECONDS)  # the reader only touches the source, which it closes itself
            if reader.is_alive():
                log.warning("reading %s is blocked: stopping without it (the source stays open)", source.description)
            stats.seconds = time.perf_counter() - start
            stats.skipped = source.skipped + stats.too_small
            stats.skips = (source.skips + stats.too_small_frames)[:MAX_LISTED_SKIPS]
            stats.stop_reason = stats.stop_reason or source.stop_reason
        if errors:
            raise errors[0]
        return stats
