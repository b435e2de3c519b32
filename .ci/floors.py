"""Print pip constraints pinning every direct dependency of pyproject.toml (runtime and the
extras named on the command line) to the lowest version it declares: `name>=X` -> `name==X`.

    python .ci/floors.py dev > floors.txt && pip install -c floors.txt -e ".[dev]"

A requirement with no lower bound is left out (pip takes what it likes), and so is one named
with `--skip` (torch: its floor is a multi-GB CUDA download, so CI keeps the CPU wheel it pins).
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

import tomllib  # Python 3.11+, as CI runs it

FLOOR = re.compile(r"^\s*([A-Za-z0-9_.\-]+)\s*(?:\[[^\]]*\])?\s*([^;]*?)\s*(;.*)?$")


def floors(requirements: list[str], skip: set[str]) -> list[str]:
    out = []
    for requirement in requirements:
        name, spec, marker = FLOOR.match(requirement).groups()
        key = name.lower().replace("_", "-")
        lowest = re.search(r"(?:>=|==)\s*([^,\s]+)", spec)
        if lowest and key not in skip:
            out.append(f"{name}=={lowest.group(1)}{marker or ''}")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("extras", nargs="*")
    parser.add_argument("--skip", action="append", default=[], help="a dependency to leave out")
    args = parser.parse_args()
    project = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]
    requirements = list(project["dependencies"])
    for extra in args.extras:
        requirements += project["optional-dependencies"][extra]
    print("\n".join(floors(requirements, {s.lower() for s in args.skip})))


if __name__ == "__main__":
    main()
