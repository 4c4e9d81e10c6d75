"""The layering: runtime at the bottom (torch-free), offseg on it, calibration on both (ONNX files, precision pins,
INT8), export on all three, chain above all four and imported by none, and no module imports a command-line module
(the chain runs the commands as a user would)."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# package -> the packages of ours it may import
ALLOWED = {"runtime": {"runtime"}, "offseg": {"offseg", "runtime"}, "export": {"export", "offseg", "runtime",
           "calibration"}, "calibration": {"calibration", "offseg", "runtime"},
           "chain": {"chain", "offseg", "export", "calibration", "runtime"}}
OURS = set(ALLOWED)
# The one upward import: offseg-run's optional .pth backend builds the PyTorch model (imported lazily, only when a
# .pth file is opened, so the runtime stays importable without torch).
EXCEPTIONS = {("runtime/backends/torch_backend.py", "offseg")}


def _imports(path: Path):
    tree = ast.parse(path.read_text())
    package = path.relative_to(ROOT).parts[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the module's package
                parts = list(path.relative_to(ROOT).with_suffix("").parts[:-node.level])
                base = ".".join(parts + ([node.module] if node.module else []))
                yield base if node.module else base or package
                if not node.module:
                    yield from (f"{base}.{alias.name}" for alias in node.names)
            else:
                yield node.module
                yield from (f"{node.module}.{alias.name}" for alias in node.names)


def test_packages_import_only_the_layers_below_and_never_a_cli_module():
    problems = []
    for package in OURS:
        for path in (ROOT / package).rglob("*.py"):
            for name in _imports(path):
                top = name.split(".")[0]
                if top in OURS and top not in ALLOWED[package] and \
                        (str(path.relative_to(ROOT)), top) not in EXCEPTIONS:
                    problems.append(f"{path.relative_to(ROOT)} imports {name}")
                if top in OURS and name.split(".")[-1] == "cli" and path.name != "cli.py":
                    problems.append(f"{path.relative_to(ROOT)} imports the command-line module {name}")
    assert not problems, "\n".join(problems)
