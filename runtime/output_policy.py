"""The one output policy of every command, checked before any work starts.

An output (file or folder) may not be an input of the same command, overwrite one (same inode: hard links and
symlinks included; a file already inside an input folder), or hold one inside a folder it fills or replaces; two
outputs of one command may not collide; the folder an output goes to must exist (a folder output's nearest existing
parent) and be writable, tried for real by creating a file. CLIs declare their path options with ``add_input`` /
``add_output``; ``runtime.console.run`` reads those marks from the parser and calls ``check_paths`` before the
command runs.
"""
from __future__ import annotations

import argparse
import fnmatch
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .errors import OffsegError

ROLE = "offseg_path_role"  # attribute set on an argparse action: "input" or "output"
OUTPUT = "offseg_output"  # on output actions: the Output fields besides the option and the path


@dataclass(frozen=True)
class Output:
    """A path a command writes. ``folder``: a folder it fills (``names``: glob patterns of what it writes there;
    None: any name) or, with ``replaced``, one it replaces whole."""
    option: str
    path: Path
    folder: bool = False
    names: tuple[str, ...] | None = None
    replaced: bool = False

    def holds(self, path: Path) -> bool:
        """True when ``path`` is this folder, or lies in it where this command writes."""
        if not self.folder:
            return False
        folder, path = _absolute(self.path), _absolute(path)
        if path == folder:
            return True
        if folder not in path.parents:
            return False
        first = path.relative_to(folder).parts[0]
        return self.replaced or self.names is None or any(fnmatch.fnmatch(first, p) for p in self.names)


def add_input(parser, *flags: str, **kwargs) -> argparse.Action:
    """``parser.add_argument`` for a path the command reads (``type`` defaults to Path)."""
    kwargs.setdefault("type", Path)
    action = parser.add_argument(*flags, **kwargs)
    setattr(action, ROLE, "input")
    return action


def add_output(parser, *flags: str, folder: bool = False, names: tuple[str, ...] | None = None,
               replaced: bool = False, **kwargs) -> argparse.Action:
    """``parser.add_argument`` for a path the command writes (see ``Output`` for ``folder``, ``names``,
    ``replaced``)."""
    kwargs.setdefault("type", Path)
    action = parser.add_argument(*flags, **kwargs)
    setattr(action, ROLE, "output")
    setattr(action, OUTPUT, {"folder": folder, "names": names, "replaced": replaced})
    return action


def declared_paths(parser: argparse.ArgumentParser, args: argparse.Namespace
                   ) -> tuple[list[tuple[str, Path]], list[Output]]:
    """The inputs (option, path) and outputs given on the command line (or by default), from the parser's marks."""
    inputs, outputs = [], []
    for action in parser._actions:
        role, value = getattr(action, ROLE, None), getattr(args, action.dest, None)
        if role is None or value is None or action.help == argparse.SUPPRESS:
            continue
        option = max(action.option_strings, key=len) if action.option_strings else action.dest  # or a positional
        if role == "input":
            inputs.append((option, Path(value)))
        else:
            outputs.append(Output(option, Path(value), **getattr(action, OUTPUT)))
    return inputs, outputs


def check_paths(inputs: list[tuple[str, Path]], outputs: list[Output]) -> None:
    """OffsegError (one sentence) for the first output that would destroy an input, collides with another output,
    or cannot be written."""
    existing = [(option, path) for option, path in inputs if path.exists()]
    for output in outputs:
        for option, path in existing:
            if same_file(output.path, path):
                raise OffsegError(f"{output.option} {output.path} is the input {option} {path}; choose another "
                                  "name, the input would be overwritten")
            if output.holds(path) or _linked_inside(output, path):
                raise OffsegError(f"{output.option} {output.path} holds the input {option} {path}; choose another "
                                  "folder, the input would be overwritten")
            if path.is_dir() and output.path.is_file() and _absolute(path) in _absolute(output.path).parents:
                raise OffsegError(f"{output.option} {output.path} is a file of the input folder {option} {path}; "
                                  "choose a name outside it, the input would be overwritten")
    for index, output in enumerate(outputs):
        for other in outputs[index + 1:]:
            if _collide(output, other):
                raise OffsegError(f"{output.option} {output.path} and {other.option} {other.path} are one "
                                  "path; give each output its own name")
    for output in outputs:
        _check_target(output)


def _collide(a: Output, b: Output) -> bool:
    if same_file(a.path, b.path) or _absolute(a.path) == _absolute(b.path):
        return True
    return a.holds(b.path) or b.holds(a.path)


def _check_target(output: Output) -> None:
    what = f"{output.option} {output.path}"
    if output.folder:
        if output.path.exists() and not output.path.is_dir():
            raise OffsegError(f"{what} is a file; give a folder")
        check_writable_folder(output.path, what)
        return
    if output.path.is_dir():
        raise OffsegError(f"{what} is a folder; give a file name")
    if output.path.parent.exists() and not output.path.parent.is_dir():
        raise OffsegError(f"{what}: {output.path.parent} is a file, not a folder")
    if not output.path.parent.is_dir():
        raise OffsegError(f"{output.option} folder {output.path.parent} does not exist; create it first")
    check_writable_folder(output.path.parent, what)


def _linked_inside(output: Output, path: Path) -> bool:
    """A hard link of the input file inside a folder output, under a name the command writes."""
    if not output.folder or not output.path.is_dir() or not path.is_file():
        return False
    target = path.stat()
    with os.scandir(output.path) as entries:
        for entry in entries:
            if output.holds(output.path / entry.name) and entry.is_file(follow_symlinks=True):
                stat = entry.stat()
                if (stat.st_dev, stat.st_ino) == (target.st_dev, target.st_ino):
                    return True
    return False


def _absolute(path: Path) -> Path:
    return Path(os.path.abspath(path)).resolve()


def check_writable_folder(folder: str | os.PathLike, what: str) -> None:
    """OffsegError unless a file can be created in ``folder`` (tried for real: read-only mounts and permissions
    show only then); a missing folder is checked through its nearest existing parent, which must be a folder."""
    folder = Path(folder)
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    if not existing.is_dir():
        raise OffsegError(f"{what}: cannot write in {existing}: it is a file, not a folder")
    try:
        handle, name = tempfile.mkstemp(prefix=".offseg-write-check.", dir=existing)
        os.close(handle)
        os.unlink(name)
    except OSError as error:
        raise OffsegError(f"{what}: cannot write in {existing} ({error.strerror or error})") from None


def same_file(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """True when both paths name one file or folder (resolved links and hard links included)."""
    a, b = Path(a), Path(b)
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and os.path.samefile(a, b))
    except OSError:
        return False
