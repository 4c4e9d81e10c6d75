"""One paper row end to end: train with the official recipe, evaluate the final checkpoint by the paper's test
protocol (and best.pth beside it), export, validate the exported model, and report the measured mIoU beside the
paper's figure.

Every step is one of the user's own commands, run as a child process (``chain.commands``) and printed before it
runs; a dry run prints them only. A re-run resumes training from its latest checkpoint, and skips each step whose
output is there, no older than the checkpoint, and made by the same command (recorded in ``steps.json``).
"""
from __future__ import annotations

import json
import shlex
import sys
from dataclasses import asdict, dataclass, replace
from pathlib import Path

from runtime.errors import OffsegError
from runtime.metrics import score_text
from runtime.sinks import write_file

from .commands import command_path, engine_args, run_command, step_failed, tensorrt_unavailable


@dataclass(frozen=True)
class ReproduceConfig:
    dataset: str = "ade20k"
    model: str = "offseg-t"
    data_root: str | None = None
    work_dir: Path = Path("offseg-reproduce")
    gpus: int = 1
    pretrained_backbone: Path | None = None
    train_args: tuple[str, ...] = ()  # more offseg-train flags (they override the recipe)
    eval_images: int | None = None  # evaluate and validate on the first N images (default all)
    input_size: tuple[int, int] | None = None  # export size; None: the slide window, or the synthetic scenes' size


@dataclass(frozen=True)
class Step:
    """One command of the sequence and the file that shows it is done."""

    name: str
    command: str
    args: tuple[str, ...]
    output: Path

    def shell(self) -> str:
        return shlex.join([self.command, *self.args])


class Paths:
    """Where each step writes, under the work folder."""

    def __init__(self, config: ReproduceConfig):
        work = config.work_dir
        self.train = work / "train"
        self.latest, self.best = self.train / "latest.pth", self.train / "best.pth"
        self.eval_latest, self.eval_best = work / "eval-latest.json", work / "eval-best.json"
        self.onnx, self.engine = work / f"{config.model}.onnx", work / f"{config.model}.fp16.plan"
        self.validation, self.steps = work / "validation", work / "steps.json"
        self.report_md, self.report_json = work / "report.md", work / "report.json"


def _data_args(config: ReproduceConfig) -> list[str]:
    args = ["--dataset", config.dataset] + (["--data-root", config.data_root] if config.data_root else [])
    return args + (["--eval-images", str(config.eval_images)] if config.eval_images else [])


def plan_steps(config: ReproduceConfig, resume: bool = False) -> list[Step]:
    """The command sequence (``resume``: training continues from its latest checkpoint)."""
    from offseg.data.datasets import LAYOUTS
    from offseg.data.synthetic import SCENE_SIZE
    paths = Paths(config)
    train = ["offseg-train", "--model", config.model, "--dataset", config.dataset, "--work-dir", str(paths.train)]
    train += ["--data-root", config.data_root] if config.data_root else []
    train += ["--pretrained-backbone", str(config.pretrained_backbone)] if config.pretrained_backbone else []
    train += [*config.train_args, *(["--resume"] if resume else [])]
    if config.gpus > 1:
        train = ["torchrun", "--standalone", "--nproc-per-node", str(config.gpus), "--no-python", *train]
    layout = LAYOUTS[config.dataset]  # the engine runs the test windows (whole images: the synthetic scenes) as is
    size = config.input_size or (layout.crop if layout.test_mode == "slide" else SCENE_SIZE)
    steps = [Step("train", train[0], tuple(train[1:]), paths.latest)]
    for name, checkpoint, output in (("eval-latest", paths.latest, paths.eval_latest),
                                     ("eval-best", paths.best, paths.eval_best)):
        steps.append(Step(name, "offseg-eval", ("--checkpoint", str(checkpoint), *_data_args(config), "--json",
                                                str(output)), output))
    steps.append(Step("export", "offseg-export", ("--checkpoint", str(paths.latest), "--output", str(paths.onnx),
                                                  "--input-size", str(size[0]), str(size[1])), paths.onnx))
    engine = tensorrt_unavailable() is None  # a TensorRT FP16 engine where TensorRT and a GPU are present
    if engine:
        steps.append(Step("engine", "offseg-export", tuple(engine_args(paths.onnx, paths.engine, "fp16")),
                          paths.engine))
    steps.append(Step("validate", "offseg-validate", ("--engine", str(paths.engine if engine else paths.onnx),
                                                      "--checkpoint", str(paths.latest), *_data_args(config),
                                                      "--report", str(paths.validation)),
                      paths.validation / "report.json"))
    return steps


def _training_done(latest: Path) -> bool:
    from offseg.checkpoint import read_training_state
    if not latest.is_file():
        return False
    state = read_training_state(latest)
    return state["iteration"] >= state["config"]["iters"]


def _is_current(step: Step, recorded: dict[str, str], latest: Path) -> bool:
    """Done by the same command, its output present and no older than the final checkpoint."""
    if recorded.get(step.name) != step.shell() or not step.output.exists():
        return False
    if step.name == "train":
        return _training_done(latest)
    return latest.is_file() and step.output.stat().st_mtime >= latest.stat().st_mtime


def _iteration(checkpoint: Path) -> int | None:
    """The training iteration an offseg-train checkpoint (latest.pth or best.pth) holds."""
    from offseg.checkpoint import read_file
    meta = read_file(checkpoint).get("meta")
    return meta.get("iteration") if isinstance(meta, dict) else None


def _best_saved_last(paths: Paths) -> int | None:
    """latest.pth's iteration when best.pth was saved at it (the same weights, so the same scores), else None."""
    best = _iteration(paths.best) if paths.best.is_file() else None
    return best if best is not None and best == _iteration(paths.latest) else None


def _run(step: Step) -> int:
    args = [command_path(a) if step.command == "torchrun" and a == "offseg-train" else a for a in step.args]
    return run_command(step.command, args)


def _record(paths: Paths, recorded: dict[str, str]) -> None:
    write_file(paths.steps, json.dumps(recorded, indent=2) + "\n")


def run_steps(config: ReproduceConfig, dry_run: bool = False) -> list[Step]:
    """Print each command and (unless ``dry_run``) run it, skipping the current ones; returns the steps."""
    paths = Paths(config)
    if dry_run:
        steps = plan_steps(config)
        for step in steps:
            print(step.shell())
        return steps
    recorded = json.loads(paths.steps.read_text()) if paths.steps.is_file() else {}
    steps = plan_steps(config, resume=paths.latest.is_file())
    for index, step in enumerate(steps, 1):
        key = Step(step.name, step.command, tuple(a for a in step.args if a != "--resume"), step.output)
        if _is_current(key, recorded, paths.latest):
            print(f"[{index}/{len(steps)}] {step.name}: current, skipped ({step.output})")
            continue
        if step.name == "eval-best" and not paths.best.is_file():
            print(f"[{index}/{len(steps)}] {step.name}: skipped, training wrote no best.pth")
            continue
        if step.name == "eval-best" and (last := _best_saved_last(paths)) is not None:
            print(f"[{index}/{len(steps)}] {step.name}: skipped, best.pth holds latest.pth's weights (iteration "
                  f"{last}), scored above")
            continue
        print(f"[{index}/{len(steps)}] {step.shell()}", flush=True)
        code = _run(step)
        if code == 2 or (code != 0 and step.name != "validate"):  # validate: 1 = drop above its bound, reported
            raise step_failed(f"the {step.name} step", step.command, step.args, code)
        recorded[step.name] = key.shell()
        _record(paths, recorded)
    return steps


@dataclass
class ReproduceReport:
    """The measured figures beside the paper's (mIoU in %; None where there is none)."""

    model: str
    dataset: str
    paper_miou: float | None
    final_miou: float  # latest.pth: the paper-comparable figure
    best_miou: float | None  # best.pth, chosen on the same validation split
    best_iteration: int | None
    iterations: int
    protocol: str
    images: int | None  # None: the whole split
    exported: str
    exported_miou: float
    exported_pytorch_miou: float
    exported_within_bound: bool
    recipe: str
    commands: list[str]


def build_report(config: ReproduceConfig, steps: list[Step]) -> ReproduceReport:
    """Read the steps' outputs into the report."""
    from offseg.checkpoint import read_training_state
    from offseg.recipes import recipe_line
    from offseg.zoo import get_spec
    paths = Paths(config)
    final = json.loads(paths.eval_latest.read_text())
    last = _best_saved_last(paths)
    if last is not None:
        best = final
    else:
        best = json.loads(paths.eval_best.read_text()) if paths.eval_best.is_file() else None
    content = json.loads((paths.validation / "report.json").read_text())
    validation = content["summary"]
    paper = get_spec(config.model).paper.get(config.dataset)
    exported = next(s for s in steps if s.name == "validate").args[1]
    return ReproduceReport(
        model=config.model, dataset=config.dataset, paper_miou=paper.miou if paper else None,
        final_miou=final["mIoU"], best_miou=best["mIoU"] if best else None,
        best_iteration=last if last is not None else _iteration(paths.best) if best else None,
        iterations=read_training_state(paths.latest)["iteration"], protocol=final["protocol"],
        images=config.eval_images, exported=Path(exported).name, exported_miou=validation["engine_miou"],
        exported_pytorch_miou=validation["reference_miou"],
        exported_within_bound=-validation["miou_delta"] <= content["bound"],  # NaN: False, as offseg-validate
        recipe=recipe_line(config.model, config.dataset), commands=[s.shell() for s in steps])


def format_report(report: ReproduceReport) -> str:
    """The report as markdown: the mIoU table, what was measured how, the exact commands."""
    delta = None if report.paper_miou is None else report.final_miou - report.paper_miou
    paper = "no figure in the paper" if report.paper_miou is None else f"{report.paper_miou:.1f}"
    lines = [f"# {report.model} on {report.dataset}: reproduction", "",
             "| checkpoint | mIoU | paper mIoU | delta |", "|---|---|---|---|",
             f"| latest.pth, iteration {report.iterations} (final: the paper-comparable figure) | "
             f"{score_text(report.final_miou)} | {paper} | {score_text(delta, '+')} |",
             f"| best.pth, iteration {report.best_iteration} ("
             + ("the same weights as latest.pth" if report.best_iteration == report.iterations else
                "best validation mIoU; optimistic, chosen on the same split")
             + f") | {score_text(report.best_miou)} | | |",
             f"| {report.exported} (offseg-validate: the same protocol, windows at the exported size) | "
             f"{score_text(report.exported_miou)} | | "
             f"{score_text(report.exported_miou - report.exported_pytorch_miou, '+')} vs PyTorch "
             f"{score_text(report.exported_pytorch_miou)}, {'within' if report.exported_within_bound else 'BEYOND'} "
             "offseg-validate's bound |", "",
             f"Test protocol: {report.protocol}; "
             + ("every validation image." if report.images is None else f"the first {report.images} images only "
                "(not comparable with the paper)."),
             "The official runs report the last checkpoint, so `offseg-eval` of latest.pth is the figure to compare.",
             f"The {report.recipe}.", "", "Commands, in order:", "", "```bash", *report.commands, "```"]
    return "\n".join(lines) + "\n"


def reproduce(config: ReproduceConfig, dry_run: bool = False) -> ReproduceReport | None:
    """Run (or with ``dry_run`` print) the sequence; writes report.md and report.json; returns the report."""
    if config.gpus < 1:
        raise OffsegError(f"--gpus must be at least 1, got {config.gpus}")
    from offseg.data.datasets import check_data_root
    if dry_run and config.dataset != "synthetic" and not config.data_root:
        print(f"note: the commands below say DATA_ROOT where the run needs --data-root (the {config.dataset} folder)",
              file=sys.stderr, flush=True)
        config = replace(config, data_root="DATA_ROOT")
    check_data_root(config.dataset, config.data_root)
    if config.dataset not in ("synthetic", "folder") and not config.pretrained_backbone:
        print("note: without --pretrained-backbone the backbone starts from scratch, while the paper starts from the "
              "EfficientFormerV2 ImageNet weights (eformer_s1/s2/l_450.pth for T/B/L): the mIoU will not be comparable",
              file=sys.stderr, flush=True)
    steps = run_steps(config, dry_run)
    if dry_run:
        return None
    report = build_report(config, steps)
    paths = Paths(config)
    write_file(paths.report_json, json.dumps(asdict(report), indent=2) + "\n")
    write_file(paths.report_md, format_report(report))
    return report
