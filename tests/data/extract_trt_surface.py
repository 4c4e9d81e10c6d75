"""Extract the Python API surface of a TensorRT release from NVIDIA's pybind11 binding sources.

Reads ``python/src/**/*.cpp`` and the wheel's ``tensorrt/__init__.py`` of a NVIDIA/TensorRT git checkout at a tag
and writes, as JSON: every class (its bases and attributes: methods, properties, nested enums), every enum (its
members, numbered in binding order) and the module-level names.
The strict fake in ``tests/fake_tensorrt.py`` is built from this file.

    git clone https://github.com/NVIDIA/TensorRT trt-src
    python tests/data/extract_trt_surface.py trt-src v10.3.0 tests/data/tensorrt_10.3.json
    python tests/data/extract_trt_surface.py trt-src v11.1 tests/data/tensorrt_11.1.json
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
from pathlib import Path

TOKEN = re.compile(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'|py::(?:class_|enum_)\s*<'
                   r'|\.\s*(?:def\w*|value|export_values|attr)\s*\(|\w+|[(){};<>=,\[\]]')
MEMBER_KINDS = {"def", "def_static", "def_property", "def_property_readonly", "def_readwrite", "def_readonly",
                "def_property_static", "def_property_readonly_static"}
PYTHON_DEF = re.compile(r'^def (\w+)\(', re.M)
BINDINGS_INIT = "python/packaging/bindings_wheel/tensorrt/__init__.py"


def _strip_comments(text: str) -> str:
    """C++ comments removed, keeping string literals intact (a ``//`` inside a string is not a comment)."""
    out, pos = [], 0
    for match in re.finditer(r'"(?:\\.|[^"\\])*"|//[^\n]*|/\*.*?\*/', text, re.S):
        out.append(text[pos:match.start()])
        out.append(match.group() if match.group().startswith('"') else " ")
        pos = match.end()
    return "".join(out + [text[pos:]])


def _template_args(tokens: list[str], i: int) -> tuple[list[str], int]:
    """The top-level identifiers of ``<...>`` starting after index ``i``; returns them and the index after ``>``."""
    depth, args, current = 1, [], []
    while depth:
        token = tokens[i]
        if token == "<":
            depth += 1
        elif token == ">":
            depth -= 1
        elif token == "," and depth == 1:
            args.append(current)
            current = []
        if depth == 1 and token not in ",":
            current.append(token)
        i += 1
    args.append(current)
    return [arg[-1] for arg in args if arg and arg[-1] not in ("py", "std")], i


def parse_bindings(text: str, surface: dict) -> None:
    """Add the classes, enums and module attributes bound in one C++ source ``text`` to ``surface``."""
    tokens = TOKEN.findall(_strip_comments(text))
    variables: dict[str, str] = {}  # C++ variable holding a py::class_ -> its qualified Python name
    cpp_names: dict[str, str] = {}  # C++ type -> qualified Python name (for base classes)
    current, parens, i = None, 0, 0  # current: (qualified name, is_enum) of the chain being read
    while i < len(tokens):
        token = tokens[i]
        if token.startswith("py::"):
            current, i = _declaration(tokens, i, surface, variables, cpp_names)
            continue
        if token.startswith("."):
            current = _member(tokens, i, surface, variables, current)
            parens += 1
        elif token in ("(", "["):
            parens += 1
        elif token in (")", "]"):
            parens -= 1
        elif token == ";" and parens == 0:  # a ';' inside a lambda argument does not end the chain
            current = None
        i += 1


def _declaration(tokens, i, surface, variables, cpp_names):
    """A ``py::class_<...>`` / ``py::enum_<...>`` at ``i``: register it; returns (current, index of its '(')."""
    is_enum = "enum_" in tokens[i]
    args, i = _template_args(tokens, i + 1)
    variable = tokens[i] if re.fullmatch(r"\w+", tokens[i]) else None
    i += 1 if variable else 0
    if tokens[i] not in ("(", "{") or not tokens[i + 3].startswith('"'):
        return None, i  # a type mention, not a binding
    scope, name = tokens[i + 1], tokens[i + 3].strip('"')
    owner = None if scope == "m" else variables.get(scope, scope)
    qualified = f"{owner}.{name}" if owner else name
    if is_enum:
        surface["enums"].setdefault(qualified, {})
    else:
        entry = surface["classes"].setdefault(qualified, {"bases": [], "attributes": {}})
        entry["bases"] = [cpp_names[a] for a in args[1:] if a in cpp_names]
        cpp_names[args[0]] = qualified
    if owner:
        surface["classes"][owner]["attributes"][name] = "enum" if is_enum else "class"
    if variable:
        variables[variable] = qualified
    return (qualified, is_enum), i + (0 if tokens[i] == "(" else 1)


def _member(tokens, i, surface, variables, current):
    """A ``.def*(`` / ``.value(`` / ``.export_values(`` / ``.attr(`` at ``i``: register it; returns the chain."""
    kind = re.match(r"\.\s*(\w+)", tokens[i]).group(1)
    previous = tokens[i - 1]
    if previous in variables:
        current = (variables[previous], False)
    name = tokens[i + 1].strip('"') if tokens[i + 1].startswith('"') else None
    if tokens[i + 1:i + 3] == ["py", "init"]:
        name = "__init__"
    if previous == "m":
        if kind in ("def", "attr") and name:
            surface["module"][name] = "function" if kind == "def" else "value"
        return None
    if current is None:
        return None
    qualified, is_enum = current
    if kind == "value" and name and is_enum:
        surface["enums"][qualified].setdefault(name, len(surface["enums"][qualified]))
    elif kind == "export_values" and is_enum:
        _export_values(surface, qualified)
    elif kind in MEMBER_KINDS and name and not is_enum:
        surface["classes"][qualified]["attributes"].setdefault(
            name, "method" if kind in ("def", "def_static") else "property")
    return current


def _export_values(surface: dict, enum: str) -> None:
    """``.export_values()`` copies the members into the enclosing scope (module or class)."""
    owner, _, _ = enum.rpartition(".")
    for member in surface["enums"][enum]:
        if owner:
            surface["classes"][owner]["attributes"].setdefault(member, "value")
        else:
            surface["module"][member] = "value"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(["git", "-C", str(repo), *args], check=True, capture_output=True, text=True).stdout


def extract(repo: Path, tag: str) -> dict:
    """The API surface of the TensorRT Python bindings at ``tag`` of a NVIDIA/TensorRT checkout ``repo``."""
    surface = {"tag": tag, "module": {}, "classes": {}, "enums": {}}
    sources = [p for p in _git(repo, "ls-tree", "-r", "--name-only", tag, "python/src").split()
               if p.endswith(".cpp")]
    # pyTensorRT.cpp calls the bind functions in dependency order; the files' own order matters for base classes.
    order = ["pyFoundationalTypes", "pyPlugin", "pyInt8", "pyGraph", "pyAlgorithmSelector", "pyCore", "pyOnnx"]
    sources.sort(key=lambda p: next((k for k, n in enumerate(order) if Path(p).stem == n), len(order)))
    for path in sources:
        parse_bindings(_git(repo, "show", f"{tag}:{path}"), surface)
    for name in PYTHON_DEF.findall(_git(repo, "show", f"{tag}:{BINDINGS_INIT}")):
        surface["module"].setdefault(name, "function")
    surface["module"]["__version__"] = "value"
    return surface


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("repo", type=Path, help="a git checkout of github.com/NVIDIA/TensorRT")
    parser.add_argument("tag", help="release tag, e.g. v10.3.0 or v11.1")
    parser.add_argument("output", type=Path, help="JSON file to write")
    args = parser.parse_args(argv)
    args.output.write_text(json.dumps(extract(args.repo, args.tag), indent=1, sort_keys=True) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
