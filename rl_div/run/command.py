"""The command that started (or resumed) a run and the package versions it ran with, one JSON line per
start in RUN/commands.jsonl; the report's provenance shows them (rl_div.report.provenance)."""

from __future__ import annotations

import json
import shlex
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

COMMANDS = "commands.jsonl"
# The packages whose versions decide a run's numbers.
PACKAGES = ("rl_div", "torch", "transformers", "ray", "vllm", "math-verify", "sentence-transformers", "trl")


def package_versions() -> dict[str, str]:
    """Installed version of each of PACKAGES that is installed, and Python's."""
    found = {"python": sys.version.split()[0]}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return found


def command_line(argv: list[str] | None = None) -> str:
    """The command as typed: 'rl-div train ...' for the console script, quoted for a shell."""
    args = list(sys.argv if argv is None else argv)
    if args and (Path(args[0]).name in ("rl-div", "cli.py") or args[0].endswith("rl_div/cli.py")):
        args[0] = "rl-div"
    return shlex.join(args)


def record_command(run_dir: Path) -> None:
    """Append this process's command line, working directory, time and package versions."""
    entry = {"time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "command": command_line(),
             "cwd": str(Path.cwd()), "versions": package_versions()}
    with open(run_dir / COMMANDS, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry) + "\n")


def read_commands(run_dir: Path) -> list[dict[str, Any]]:
    """Every recorded start of the run, oldest first (none for a run made before they were recorded)."""
    path = run_dir / COMMANDS
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return rows
