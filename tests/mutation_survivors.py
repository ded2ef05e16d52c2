"""Write tests/mutation_survivors.md from the last ``mutmut run``, keeping the explanations.

Run after ``mutmut run`` (see ``[tool.mutmut]`` in pyproject.toml)::

    python tests/mutation_survivors.py

Each mutant that survived is listed with its diff and the reason it changes nothing
any code can observe. A reason is kept from the file as it was for the mutant whose
changed lines are the same (mutant numbers change with the code, the change does
not). A survivor with no reason yet is written with ``Why: not explained`` and makes
this script exit with status 1: it is a missing test, or needs its reason written.
"""

from __future__ import annotations

import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

REPORT = Path(__file__).with_name("mutation_survivors.md")
UNEXPLAINED = "not explained"


def mutmut(*args: str) -> str:
    return subprocess.run(
        [sys.executable, "-m", "mutmut", *args], capture_output=True, text=True, check=True
    ).stdout


def change_of(diff: str) -> str:
    """The lines a mutant removes and adds, without the diff's headers and context."""
    changed = [
        line.rstrip()
        for line in diff.splitlines()
        if line[:1] in "+-" and not line.startswith(("+++", "---"))
    ]
    return "\n".join(changed)


def known_reasons() -> dict[str, str]:
    """The reasons in the report as it is, by the change they explain."""
    if not REPORT.exists():
        return {}
    entries = re.findall(r"```diff\n(.*?)\n```\nWhy: (.*?)\n(?=\n|\Z)", REPORT.read_text(), re.S)
    return dict(entries)


def main() -> int:
    statuses = dict(
        line.strip().rsplit(": ", 1) for line in mutmut("results", "--all", "true").splitlines()
    )
    counts = Counter(statuses.values())
    reasons = known_reasons()
    lines = [
        "# Mutants of channel.py that survive the tests",
        "",
        "Written by `python tests/mutation_survivors.py` after `mutmut run`. Of "
        f"{len(statuses)} mutants, "
        + ", ".join(f"{n} {status}" for status, n in sorted(counts.items()))
        + ". Each survivor below changes nothing any code can observe.",
    ]
    unexplained = 0
    for name, status in sorted(statuses.items()):
        if status in {"killed", "timeout"}:  # a timeout is a hang the tests detect
            continue
        change = change_of(mutmut("show", name))
        why = reasons.get(change, UNEXPLAINED)
        unexplained += why == UNEXPLAINED
        function = re.sub(r"__mutmut_\d+$", "", name.split(".", 1)[1])
        lines += ["", f"## `{function}` ({status})", "", "```diff", change, "```", f"Why: {why}"]
    REPORT.write_text("\n".join(lines) + "\n")
    if unexplained:
        print(f"{unexplained} survivors have no reason yet: see {REPORT}")
    return 1 if unexplained else 0


if __name__ == "__main__":
    sys.exit(main())
