"""The GPU workflow for self-hosted runners is valid GitHub Actions and does what the parity promise needs."""
import shutil
import subprocess
from pathlib import Path

import pytest

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
