"""The GPU workflow for self-hosted runners is valid GitHub Actions and does what the parity promise needs."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

WORKFLOW = Path(__file__).parents[1] / ".github" / "workflows" / "gpu.yml"


def test_gpu_workflow_is_schema_valid():
    tool = shutil.which("check-jsonschema")
    if tool is None:
        pytest.fail("check-jsonschema (dev extra) is needed to lint the workflow")
    result = subprocess.run([tool, "--builtin-schema", "vendor.github-workflows", str(WORKFLOW)],
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_gpu_workflow_runs_gpu_tests_engines_and_validation():
    text = WORKFLOW.read_text()
    assert "runs-on: [self-hosted, gpu]" in text and "pytest -m gpu" in text
    assert "--format engine --fp16" in text and "--format engine --int8" in text
    assert "offseg-validate" in text and "upload-artifact" in text
    for model in ("offseg-t", "offseg-b", "offseg-l"):
        assert model in text


# ---- a dry run of each job's shell steps, with stand-ins for the commands they call ------------------------------

STUB = r'''#!/usr/bin/env python3
"""Stand-in for a command of the GPU workflow: checks what the real one would refuse (an output file whose folder
does not exist: exit 2, as our CLIs do), creates what the real one creates, and logs the call."""
import os, sys
from pathlib import Path

name, args = Path(sys.argv[0]).name, sys.argv[1:]
with open(os.environ["DRY_RUN_LOG"], "a") as log:
    log.write(" ".join([name, *args]) + "\n")
value = lambda flag: args[args.index(flag) + 1] if flag in args else None
if name in ("python", "python3"):
    if args[:2] == ["-m", "venv"]:
        Path(args[-1], "bin").mkdir(parents=True, exist_ok=True)
        Path(args[-1], "bin", "activate").write_text("")
    elif args[:1] == ["-c"] and "import torch" in args[1]:
        sys.exit(1)  # the device has no torch
    elif args and args[0].endswith("run_all.py"):
        Path("benchmarks/latency.png").write_bytes(b"")
    elif args and args[0].endswith("gpu_check.py"):
        sys.exit(0 if Path(value("--json")).parent.is_dir() else 2)
    sys.exit(0)
if name.startswith("offseg-"):
    for flag in ("--summary", "--json", "--output", "--timing-cache"):
        if value(flag) and not Path(value(flag)).parent.is_dir():
            sys.exit(f"error: {flag} {value(flag)}: folder {Path(value(flag)).parent} does not exist")
    for flag in ("--work-dir", "--report", "--save-masks"):
        if value(flag):
            Path(value(flag)).mkdir(parents=True, exist_ok=True)
    if value("--work-dir"):
        Path(value("--work-dir"), "latest.pth").write_bytes(b"")
    if value("--output"):
        Path(value("--output")).write_bytes(b"")
'''
COMMANDS = ("python", "python3", "pip", "nvidia-smi", "nvcc", "offseg-train", "offseg-export", "offseg-validate",
            "offseg-run", "gst-launch-1.0")


def matrix_values(job: dict) -> dict:
    """The first combination of a job's matrix, with its ``include`` entries applied."""
    matrix = job.get("strategy", {}).get("matrix", {})
    values = {key: options[0] for key, options in matrix.items() if key != "include"}
    for extra in matrix.get("include", []):
        if all(values.get(k) == v for k, v in extra.items() if k in values):
            values.update({k: v for k, v in extra.items() if k not in values})
    return values


def dry_run(job: dict, folder: Path, path_dirs: list[str]) -> subprocess.CompletedProcess:
    values = matrix_values(job)
    scripts = [re.sub(r"\$\{\{\s*matrix\.(\w+)\s*\}\}", lambda m: str(values[m.group(1)]), step["run"])
               if "run" in step else f"mkdir -p {step['with']['path']}"  # what download-artifact creates
               for step in job["steps"]
               if "run" in step or step.get("uses", "").startswith("actions/download-artifact")]
    assert not any("${{" in script for script in scripts), "an expression the dry run cannot expand"
    (folder / "benchmarks").mkdir()
    (folder / "benchmarks" / "README.md").write_text("")
    script = "set -euo pipefail\n" + "\n".join(f"(\n{s}\n)" for s in scripts)  # each step in its own shell
    return subprocess.run(["bash", "-c", script], capture_output=True, text=True, cwd=folder,
                          env={"PATH": os.pathsep.join(path_dirs), "DRY_RUN_LOG": str(folder / "calls.log"),
                               "HOME": str(folder)})


@pytest.fixture
def stubs(tmp_path) -> Path:
    folder = tmp_path / "stubs"
    folder.mkdir()
    for name in COMMANDS:
        (folder / name).write_text(STUB.replace("#!/usr/bin/env python3", f"#!{sys.executable}"))
        (folder / name).chmod(0o755)
    return folder


# ids: a test whose id holds the word "gpu" reads as gpu-marked to conftest (skipped without a GPU)
@pytest.mark.parametrize("job_name", ["gpu", "jetson"], ids=["gpu-host-job", "jetson-job"])
def test_each_job_s_shell_steps_run_through_with_stand_in_commands(tmp_path, stubs, job_name):
    job = yaml.safe_load(WORKFLOW.read_text())["jobs"][job_name]
    work = tmp_path / "work"
    work.mkdir()
    shell_tools = [str(Path(shutil.which(t)).parent) for t in ("bash", "mkdir", "cp", "basename")]
    result = dry_run(job, work, [str(stubs), *dict.fromkeys(shell_tools)])
    assert result.returncode == 0, result.stdout + result.stderr
    calls = (work / "calls.log").read_text().splitlines()
    assert any(c.startswith("offseg-run") or c.startswith("offseg-validate") for c in calls)
    pip_lines = [c for c in calls if c.startswith("pip install")]
    assert not any("pycuda" in c and "dev" in c for c in pip_lines), "pycuda builds in its own step"
    if job_name == "jetson":
        assert not any("opencv" in c or "'.[jetson]'" in c or ".[jetson]" in c for c in pip_lines), pip_lines
        dla = next(c for c in calls if "--dla-core" in c)
        assert "--workspace" in dla


def test_the_dry_run_catches_a_missing_output_folder(tmp_path, stubs):
    job = {"steps": [{"run": "offseg-run --engine m.plan --images frames --summary reports/m.json"}]}
    work = tmp_path / "work"
    work.mkdir()
    result = dry_run(job, work, [str(stubs), str(Path(shutil.which("bash")).parent)])
    assert result.returncode == 1 and "folder reports does not exist" in result.stderr
