"""The suite on every supported CPython this machine has: ``python -m nox``.

Each version runs, in a fresh virtual environment, the README's test command (the whole
suite, every assertion active), then the specification (``test_channel.py``) again
under branch coverage; ``coverage`` then combines what the versions ran and requires
every branch of ``channel.py``. 3.11, the oldest supported version, must be there; a
newer one runs when its ``python3.X`` is found, on ``PATH`` or installed by pyenv.
"""

from __future__ import annotations

import glob
import os
import shutil

import nox

SUPPORTED = ("3.11", "3.12", "3.13", "3.14")
REQUIRED = "3.11"

# pyenv's interpreters, found without activating them (its shims need PYENV_VERSION).
_pyenv = os.environ.get("PYENV_ROOT") or os.path.expanduser("~/.pyenv")
_found = [path for v in SUPPORTED for path in sorted(glob.glob(f"{_pyenv}/versions/{v}.*/bin"))]
os.environ["PATH"] = os.pathsep.join([*_found, os.environ.get("PATH", "")])
PYTHONS = [v for v in SUPPORTED if v == REQUIRED or shutil.which(f"python{v}")]

nox.options.sessions = ["tests", "coverage"]  # bench, docs: on request
nox.options.error_on_missing_interpreters = True  # a missing 3.11 fails the run
nox.options.default_venv_backend = "venv"


@nox.session(python=PYTHONS)
def tests(session: nox.Session) -> None:
    """The whole suite as the README runs it; then the specification under branch coverage."""
    session.install(".[test]")
    session.run("python", "--version")
    session.run("python", "-m", "pytest", *session.posargs)
    session.run(
        "python", "-m", "coverage", "run", "--parallel-mode", "-m", "pytest", "-p", "no:randomly",
        "test_channel.py", *session.posargs,
    )  # fmt: skip


@nox.session
def coverage(session: nox.Session) -> None:
    """Every branch of channel.py, run by one version or another."""
    session.install("coverage[toml]>=7.6")
    session.run("python", "-m", "coverage", "combine")
    session.run("python", "-m", "coverage", "report", "--fail-under=100")
    session.log(
        f"The suite, then the specification under coverage, ran on CPython {', '.join(PYTHONS)}."
    )


@nox.session(python=REQUIRED)
def bench(session: nox.Session) -> None:
    """The benchmark, with instruction counts on every supported CPython found.

    Writes benchmarks/results.md and results.png; pyperf's and the script's own options
    go after ``--`` (``python -m nox -s bench -- --quick --out /tmp/bench``).
    """
    session.install(".[bench]")
    others: list[str] = []
    for version in PYTHONS:
        if version != REQUIRED:
            venv = f"{session.virtualenv.location}-{version}"
            session.run(f"python{version}", "-m", "venv", "--clear", venv, external=True)
            session.run(f"{venv}/bin/pip", "install", "--quiet", ".[bench]", external=True)
            others.append(f"--count-with={venv}/bin/python")
    session.run("python", "benchmarks/bench.py", "--instructions", *others, *session.posargs)


@nox.session(python=REQUIRED)
def docs(session: nox.Session) -> None:
    """The Sphinx site, every warning an error: docs/_build/html/index.html."""
    session.install(".[docs]")
    session.run("sphinx-build", "-W", "--keep-going", "-b", "html", "docs", "docs/_build/html")
