"""The README cannot drift from the tools: every option it shows for a command is in that command's ``--help``, and
every repository file it names exists."""
import argparse
import importlib
import re
import shlex
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
ENTRY_POINTS = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
REPO_FOLDERS = ("offseg", "export", "runtime", "calibration", "chain", "tests", "benchmarks", "docs", ".github", ".ci")


def listed_options(command: str, hidden: bool = False) -> set[str]:
    """The options ``command --help`` lists (with ``hidden``, its hidden aliases too)."""
    module, function = ENTRY_POINTS[command].split(":")
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help
    argparse.ArgumentParser.print_help = lambda parser, file=None: seen.append(parser)
    try:
        with pytest.raises(SystemExit):
            getattr(importlib.import_module(module), function)(["--help"])
    finally:
        argparse.ArgumentParser.print_help = original
    return {option for action in seen[0]._actions if hidden or action.help != argparse.SUPPRESS
            for option in action.option_strings}


def command_lines() -> list[str]:
    """Every shell line of the README's code blocks (continuations joined) and every inline code span."""
    lines, in_block, prose = [], False, []
    for line in README.replace("\\\n", " ").splitlines():
        if line.startswith("```"):
            in_block = not in_block
        elif in_block:
            lines.append(line)
        else:
            prose.append(line)
    return lines + re.findall(r"`([^`]+)`", "\n".join(prose))


def invocations() -> list[tuple[str, str]]:
    """(command, option) for each ``--option`` written after one of our commands, up to the next command."""
    found = []
    for line in command_lines():
        try:
            words = shlex.split(line.split(" #")[0], comments=False)
        except ValueError:
            words = line.split()
        command = None
        for word in words:
            if word in ENTRY_POINTS:
                command = word
            elif word in ("|", "&&", ";", "&") or word.startswith(("python", "pip", "torchrun", "scp")):
                command = None if not word.startswith("torchrun") else command
            elif command and word.startswith("--"):
                found.append((command, word.split("=")[0].rstrip(",.)")))
    return sorted(set(found))


def table_options() -> list[tuple[str, str]]:
    """(command, option) from the README's option table (rows ``| idea | `--opt` ... | cmd, cmd |``)."""
    table = README.split("| idea | option | commands |", 1)[1].split("\n\n", 1)[0]
    pairs = []
    for row in table.splitlines()[2:]:
        _, options, commands = [cell.strip() for cell in row.strip("|").split("|")]
        names = [f"offseg-{c.split(' (')[0].strip()}" for c in commands.split(",")]
        for option in re.findall(r"`(--[a-z0-9-]+)", options):
            pairs += [(name, option) for name in names if name in ENTRY_POINTS]
    return pairs


OPTIONS = {command: listed_options(command) for command in ENTRY_POINTS}


def test_the_readme_shows_commands_and_options():
    """The parsers below see real content (a README without commands would pass the other tests)."""
    assert len(invocations()) > 50 and len(table_options()) > 10


@pytest.mark.parametrize("command,option", invocations() + table_options())
def test_every_option_the_readme_shows_is_in_that_commands_help(command, option):
    assert option in OPTIONS[command], f"README shows `{command} ... {option}`, which --help does not list"


FOREIGN_OPTIONS = {"--dist": "pytest", "--no-deps": "pip", "--system-site-packages": "python3 -m venv",
                   "--nproc-per-node": "torchrun", "--standalone": "torchrun", "--no-python": "torchrun",
                   "--model-repository": "tritonserver", "--layerPrecisions": "trtexec"}  # other tools' options
EARLIER_NAMES = re.compile(r"[^.;]*\bearlier names?\b[^.;]*", re.I)  # the clauses that list old option names


def code_options(text: str) -> set[str]:
    """The ``--options`` in ``text``'s code blocks and inline code spans."""
    blocks = re.findall(r"```[a-z]*\n(.*?)```", text, re.S)
    code = blocks + re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
    return {option for span in code for option in re.findall(r"(?<![\w-])(--[A-Za-z][A-Za-z0-9-]*)", span)}


def test_every_option_the_readme_names_anywhere_is_a_current_one():
    """Also in prose without its command (``--batch N`` had stayed in offseg-run's pipeline line after the option
    became --batch-size): each option is listed by some command's --help or is another tool's; old names appear only
    in the clauses that say they are old, and each is still accepted."""
    listed = set().union(*OPTIONS.values())
    current = code_options(EARLIER_NAMES.sub("", README))
    assert len(current) > 80
    assert sorted(current - listed - set(FOREIGN_OPTIONS)) == []
    earlier = code_options("\n".join(EARLIER_NAMES.findall(README))) - listed
    hidden = set().union(*(listed_options(command, hidden=True) for command in ENTRY_POINTS))
    assert len(earlier) >= 8 and sorted(earlier - hidden) == []


def repository_paths() -> list[str]:
    """Relative link targets and code spans that name a file or folder of this repository."""
    links = [target.split("#")[0] for target in re.findall(r"\]\(([^)\s]+)\)", README)
             if not target.startswith(("http", "#", "mailto:"))]
    spans = [span.split("::")[0].split()[0] for span in re.findall(r"`([^`\n]+)`", README)
             if span.startswith(tuple(f"{folder}/" for folder in REPO_FOLDERS))]
    return sorted({path.rstrip(".,:;") for path in links + spans if path})


@pytest.mark.parametrize("path", repository_paths())
def test_every_repository_file_the_readme_names_exists(path):
    matches = list(ROOT.glob(path)) if "*" in path else [ROOT / path] if (ROOT / path).exists() else []
    assert matches, f"README names {path}, which is not in the repository"


def test_ci_runs_the_readme_test_command_after_its_set_up():
    blocks = re.findall(r"```bash\n(.*?)\n```", README.split("## Start here", 1)[1], re.S)
    set_up, tests = blocks[0], blocks[1]
    ci = (ROOT / ".ci" / "run").read_text().strip().splitlines()
    assert ci[-1] == tests and set_up.startswith(ci[-2].replace(" -q", "") + " && offseg-demo")
