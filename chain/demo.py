"""The README's main job, offline: train (or load) -> export -> calibrate -> run on a video -> validate -> report.

Every step writes under the work folder, atomically, and is skipped on the next run when its output is already
there and was made from the same inputs (the checkpoint hash is recorded in the ONNX metadata, the ONNX hash in the
INT8 model). With TensorRT and a GPU present, FP16 and INT8 engines join the table.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

from runtime.errors import OffsegError
from runtime.progress import counted

from .commands import build_engine, run_step, tensorrt_unavailable

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class DemoConfig:
    workdir: Path = Path("offseg-demo")
    model: str = "offseg-t"
    checkpoint: Path | None = None
    train_iters: int = 300
    train_crop: tuple[int, int] = (128, 128)
    train_lr: float = 1e-3  # from scratch on synthetic scenes (the official 6e-5 assumes a pretrained backbone)
    input_size: tuple[int, int] = (256, 448)
    video_frames: int = 48
    video_size: tuple[int, int] = (288, 512)
    calib_images: int = 32
    val_images: int = 24

    @classmethod
    def quick(cls, workdir: Path, **overrides) -> DemoConfig:
        """The CI-sized run: a short training, small inputs, few frames and images."""
        values = dict(workdir=workdir, train_iters=100, input_size=(128, 224), video_frames=8, video_size=(144, 256),
                      calib_images=8, val_images=12)
        return cls(**{**values, **overrides})


class Steps:
    """Numbered step lines ``[i/N] ...`` with N known up front, so the counter only goes forward."""

    def __init__(self, total: int):
        self.total, self.done = total, 0

    def start(self, text: str) -> None:
        self.done += 1
        print(f"[{self.done}/{self.total}] {text}", flush=True)


RESUME_HINT = "run the same offseg-demo command again to continue"


@dataclass
class Artifact:
    name: str
    path: Path
    precision: str
    runtime: str


def _trained_checkpoint(config: DemoConfig, steps: Steps) -> Path:
    from offseg.checkpoint import read_training_state
    from offseg.train import TrainConfig, train
    work = config.workdir / "train"
    latest = work / "latest.pth"
    state = read_training_state(latest) if latest.is_file() else {"iteration": 0, "config": {}}
    done, schedule = state["iteration"], state["config"].get("iters", config.train_iters)
    if done >= config.train_iters:
        steps.start(f"model: reusing {latest} ({done} iterations on synthetic scenes)")
        return latest
    resume = done > 0 and schedule == config.train_iters  # another run's schedule cannot be continued
    steps.start(f"model: training {config.model} on synthetic scenes ({config.train_iters} iterations"
                + (f", continuing from iteration {done}" if resume else "") + ", cached for the next run)")
    if done and not resume:
        print(f"      {latest} holds {done} iterations of a {schedule}-iteration run: training afresh")
    _warn_if_busy()
    return train(TrainConfig(model=config.model, dataset="synthetic", work_dir=str(work), iters=config.train_iters,
                             batch_size=8, crop=config.train_crop, scale=(384, 256), lr=config.train_lr,
                             warmup_iters=max(config.train_iters // 10, 1), checkpoint_interval=50,
                             eval_interval=10 ** 9, workers=1, synthetic_length=2000, eval_images=config.val_images,
                             resume=resume, resume_hint=RESUME_HINT))


def _warn_if_busy() -> None:
    """Say up front when other work holds the cores: training then takes several times its idle duration."""
    import os
    cores = os.cpu_count() or 1
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0
    if load >= cores:
        threads = "" if "OMP_NUM_THREADS" in os.environ else (
            f"; fewer PyTorch threads suffer less from the other work: OMP_NUM_THREADS={max(1, cores // 2)} "
            "offseg-demo ... (benchmarks/README.md, a shared CPU)")
        print(f"      this machine is busy (load {load:.1f} on {cores} cores): training will take several times "
              f"longer than on idle cores; offseg-demo --quick is the short run{threads}", flush=True)


def _export(config: DemoConfig, checkpoint: Path, steps: Steps) -> Path:
    from calibration.files import file_sha256, load_onnx, read_metadata
    from export.onnx import OnnxOptions, export_onnx
    from export.parity import onnx_parity

    from export.onnx import label_metadata
    from offseg.checkpoint import build_from_checkpoint, read_file
    path = config.workdir / "model.onnx"
    wanted = {"offseg.checkpoint_sha256": file_sha256(checkpoint),
              "offseg.input_size": " ".join(map(str, config.input_size))}
    if path.is_file() and all(read_metadata(load_onnx(path)).get(k) == v for k, v in wanted.items()):
        steps.start(f"export: reusing {path}")
        return path
    content = read_file(checkpoint)  # once: the weights, then the class names
    model, name = build_from_checkpoint(checkpoint, None if config.checkpoint else config.model, content=content)
    labels = label_metadata(model.num_classes, checkpoint, content)
    del content
    options = OnnxOptions(input_size=config.input_size)
    steps.start(f"export: {name} -> {path} ({config.input_size[0]}x{config.input_size[1]}, fused offset-learning "
                "head)")
    export_onnx(model, name, path, options, checkpoint, labels)
    print(f"      parity vs PyTorch: {onnx_parity(model, path, options)}")
    return path


def _int8(config: DemoConfig, onnx_path: Path, target: str) -> Path:
    from calibration.quantize import QuantOptions, quantize_unless_current
    path = config.workdir / f"model.int8-{target}.onnx"
    result = quantize_unless_current(onnx_path, path, "synthetic", QuantOptions(target=target,
                                                                                samples=config.calib_images))
    print(f"      {target}: reusing {path}" if result is None else f"      {target}: {path}, {result}")
    return path


def _engines(config: DemoConfig, onnx_path: Path, steps: Steps) -> list[Artifact]:
    """FP16 and INT8 TensorRT engines (when TensorRT and a GPU are present)."""
    steps.start("TensorRT engines: FP16 and INT8")
    return [Artifact(f"TensorRT {precision.upper()}",
                     build_engine(onnx_path, config.workdir / f"model.{precision}.plan", precision), precision,
                     "TensorRT") for precision in ("fp16", "int8")]


def _announce(config: DemoConfig, engines: bool) -> None:
    """What the run does, which part is long, how to stop and continue it."""
    training = "" if config.checkpoint else (
        f"train {config.model} for {config.train_iters} iterations (the long part: minutes on idle cores, far longer "
        "on a busy machine; the expected time follows the first iterations), ")
    print(f"offseg-demo into {config.workdir}/: {training}export, INT8, "
          f"{'TensorRT engines, ' if engines else ''}run and validate each artifact. Ctrl-C stops cleanly; the same "
          "command continues where it stopped.", flush=True)


def _check_classes(checkpoint: Path) -> None:
    """OffsegError unless ``checkpoint`` predicts the synthetic scenes' classes (the demo validates on them)."""
    from offseg.checkpoint import checkpoint_num_classes, extract_state_dict, read_file
    from offseg.data.synthetic import CLASSES

    if not checkpoint.is_file():
        raise OffsegError(f"checkpoint {checkpoint} does not exist")
    classes = checkpoint_num_classes(extract_state_dict(read_file(checkpoint)))
    if classes != len(CLASSES):
        raise OffsegError(f"{checkpoint} predicts {counted(classes, 'class')}, and the demo validates every artifact "
                          f"on the synthetic scenes' {len(CLASSES)} ({', '.join(CLASSES)}): give a checkpoint trained "
                          "on them (offseg-demo without --checkpoint trains one), or use offseg-export, offseg-run and "
                          "offseg-validate on your own data")


def run_demo(config: DemoConfig) -> list[dict]:
    """Run every step; returns the table rows (also written to report.md / report.json)."""
    from offseg.data.synthetic import write_video
    if config.checkpoint is not None:
        _check_classes(Path(config.checkpoint))
    try:
        config.workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise OffsegError(f"cannot write to {config.workdir}: {error.strerror}") from None
    no_engines = tensorrt_unavailable()
    artifact_count = 2 if no_engines else 4
    steps = Steps(3 + (0 if no_engines else 1) + 2 * artifact_count)
    _announce(config, not no_engines)
    if config.checkpoint:
        steps.start(f"model: {config.checkpoint}")
    checkpoint = config.checkpoint or _trained_checkpoint(config, steps)
    onnx_path = _export(config, checkpoint, steps)
    steps.start("INT8: Q/DQ graphs for ONNX Runtime (CPU) and for TensorRT devices")
    artifacts = [Artifact("ONNX FP32", onnx_path, "fp32", "ONNX Runtime CPU"),
                 Artifact("ONNX INT8 (Q/DQ)", _int8(config, onnx_path, "onnxruntime"), "int8", "ONNX Runtime CPU")]
    _int8(config, onnx_path, "tensorrt")  # the Q/DQ graph a TensorRT device builds from
    if no_engines:
        print(f"      TensorRT engines: skipped ({no_engines})")
    else:
        artifacts += _engines(config, onnx_path, steps)
    video = config.workdir / f"synthetic-{config.video_frames}x{config.video_size[0]}x{config.video_size[1]}.mp4"
    if not video.is_file():
        write_video(video, seed=7, frames=config.video_frames, height=config.video_size[0],
                    width=config.video_size[1])
    rows = []
    for artifact in artifacts:
        stem = artifact.path.name.replace(".onnx", "").replace(".plan", "")
        out, summary = config.workdir / f"{stem}.mp4", config.workdir / f"{stem}.run.json"
        steps.start(f"offseg-run with {artifact.name}: {video.name} -> {out}")
        run_step(f"offseg-run on {artifact.path.name}", "offseg-run",
                 ["--engine", str(artifact.path), "--video", str(video), "--output", str(out), "--legend", "--summary",
                  str(summary), "--no-progress"])
        report = config.workdir / f"validation-{stem}"
        steps.start(f"offseg-validate {artifact.name} on {config.val_images} synthetic validation scenes")
        code = run_step(f"offseg-validate of {artifact.path.name}", "offseg-validate",
                        ["--engine", str(artifact.path), "--checkpoint", str(checkpoint), "--dataset", "synthetic",
                         "--eval-images", str(config.val_images), "--report", str(report)],
                        accepted=(0, 1))  # 1: a drop above the bound, in the table
        figures = json.loads((report / "report.json").read_text())["summary"]
        rows.append({"artifact": artifact.name, "file": artifact.path.name, "precision": artifact.precision,
                     "runtime": artifact.runtime, "miou": figures["engine_miou"],
                     "pytorch_miou": figures["reference_miou"], "delta": figures["miou_delta"],
                     "agreement": figures["pixel_agreement"], "fps": json.loads(summary.read_text())["fps"],
                     "within_bound": code == 0, "video": out.name, "report": f"{report.name}/report.md"})
    _write_table(config, rows)
    return rows


def miou_note(config: DemoConfig) -> str:
    """Why the table's PyTorch mIoU is not the figure training printed."""
    size = "x".join(map(str, config.input_size))
    return (f"The PyTorch column runs the model exactly as each artifact runs (every scene padded or windowed to the "
            f"exported {size} input), which moves a few pixels near the borders; the mIoU printed at the end of "
            f"training is the same model on the same {config.val_images} scenes at their own size.")


def format_table(rows: list[dict]) -> str:
    lines = ["| artifact | precision | runtime | mIoU | PyTorch mIoU | delta | pixel agreement | FPS (pipeline) |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r['artifact']} | {r['precision']} | {r['runtime']} | {r['miou']:.2f} | {r['pytorch_miou']:.2f} | "
              f"{r['delta']:+.2f} | {r['agreement']:.2f}% | {r['fps']:.1f} |" for r in rows]
    return "\n".join(lines)


def _write_table(config: DemoConfig, rows: list[dict]) -> None:
    from runtime.sinks import write_file
    workdir = config.workdir
    write_file(workdir / "report.json", json.dumps(rows, indent=2) + "\n")
    body = ["# OffSeg Deploy demo", "", format_table(rows), "",
            "mIoU on synthetic validation scenes; delta = artifact - PyTorch; pixel agreement of the label maps. "
            "Annotated videos and per-artifact validation reports (with side-by-side pictures) are linked below. "
            + miou_note(config), ""]
    body += [f"- {r['artifact']}: video [{r['video']}]({r['video']}), report [{r['report']}]({r['report']})"
             for r in rows]
    write_file(workdir / "report.md", "\n".join(body) + "\n")
