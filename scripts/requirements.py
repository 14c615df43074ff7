"""Print the requirements pyproject.toml declares, one a line, for ``pip install -r``.

The Dockerfile installs the dependencies in a layer of their own before the code is copied (so a
code change does not reinstall them), and ``scripts/lock`` resolves them afresh; both read them
here rather than building the package to learn them.

    python scripts/requirements.py [--extra NAME ...] pyproject.toml
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    """``[project] dependencies`` plus those of each named optional extra."""
    project = tomllib.loads(pyproject.read_text())["project"]
    found = list(project.get("dependencies", []))
    optional = project.get("optional-dependencies", {})
    for extra in extras:
        if extra not in optional:
            raise SystemExit(f"error: {pyproject} has no optional dependencies named {extra!r}")
        found += optional[extra]
    return found


def main() -> None:
    """Parse the command line and print the requirements."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("pyproject", type=Path)
    parser.add_argument("--extra", action="append", default=[], help="also an optional extra's")
    args = parser.parse_args()
    sys.stdout.write("".join(f"{line}\n" for line in requirements(args.pyproject, args.extra)))


if __name__ == "__main__":
    main()
