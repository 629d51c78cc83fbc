"""dsflow.deps: the import closure of a command, read from the source, and the layering it shows."""

import re
from pathlib import Path

from dsflow import deps
from dsflow.cli import COMMANDS
from tests.conftest import ROOT

PACKAGE = ROOT / "src" / "dsflow"


def test_closure_follows_every_form_of_import_anywhere_in_a_file(tmp_path):
    pkg = tmp_path / "dsflow"
    pkg.mkdir()
    files = {
        "__init__.py": "class UserError(Exception): pass\n",
        "a.py": "from dsflow import UserError, b\nimport dsflow.c\n",
        "b.py": "def f():\n    from dsflow.d import thing\n",
        "c.py": "import os\n",
        "d.py": "thing = 1\n",
        "e.py": "import dsflow.a\n",  # not reached from a
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    names = [Path(p).name for p in deps.closure(pkg, "dsflow.a")]
    assert names == ["__init__.py", "a.py", "b.py", "c.py", "d.py"]


def test_no_stage_imports_another_stage():
    """Stages (the commands the rules run) share ground-floor modules (audio, csvfile, dataset, checkpoints, scorer,
    ...), never each other's code."""
    text = "\n".join(p.read_text() for p in (ROOT / "rules").glob("*.smk"))
    stage_commands = set(re.findall(r'code\("([^"]+)"\)', text)) | {"transcribe"}
    stages = {COMMANDS[c] for c in stage_commands}
    for command, module in COMMANDS.items():
        closure = {f"dsflow.{Path(p).stem}" for p in deps.command_code(PACKAGE, command)}
        others = closure & stages - {module}
        assert not others, f"dsflow {command} ({module}) imports the stage(s) {sorted(others)}"


def test_every_command_runs_the_cli_and_its_own_module():
    for command, module in COMMANDS.items():
        names = {Path(p).stem for p in deps.command_code(PACKAGE, command)}
        assert {"__init__", "cli", "log", module.split(".")[1]} <= names, command
