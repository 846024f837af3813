"""The version matrix: the test suite against every minor release of the torchmetrics and Lightning we declare.

``.venv/bin/nox`` runs every session (each in a venv of its own under ``.nox/``, about 40 minutes on 2 cores, more for
the sessions of an old PyTorch, which download a CUDA build); ``.venv/bin/nox -s torchmetrics-1.3`` runs one,
``.venv/bin/nox -t lightning`` one family, ``.venv/bin/nox -l`` lists them, and arguments after ``--`` go to pytest.
Each session installs its PyTorch first, then the pinned releases, then ``-e .[test]``, all under a constraints file
that holds the pins, so that pip cannot move them. Its PyTorch is a parameter of the session: the ``torchmetrics-``
and ``lightning-`` sessions take PyTorch's CPU build that the README's set-up uses (``torch==2.13.0``, a local wheel:
PyPI's default build for Linux is a CUDA one of several GB); the ``torch-`` sessions and ``oldest`` take PyPI's build
of their release (a CUDA build, which runs on the CPU too).

- ``torchmetrics-X.Y``: the newest patch release of each torchmetrics minor from the declared floor on, with
  the newest Lightning;
- ``lightning-X.Y``: the same for Lightning (``lightning`` and ``pytorch-lightning``), with the newest
  torchmetrics;
- ``torch-X.Y``: the declared PyTorch floor, a release about halfway to the newest, and the newest, each with the
  newest torchmetrics and Lightning that support it;
- ``oldest``: the oldest declared PyTorch, torchmetrics and Lightning together (``.ci/run`` runs it);
- ``python-X.Y``: the Pythons these machines have but no CPU build of PyTorch for: the sources byte-compile
  with warnings as errors, the wheel installs, and the modules that need no PyTorch import;
- ``package``: builds the sdist and the wheel, checks them (``twine check --strict``, ``check-wheel-contents``,
  the sdist's file list, the licence metadata, no relative link in the README) and imports the wheel in a fresh
  venv (``.ci/run`` runs it).
"""

import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Sequence
from pathlib import Path

import nox

nox.options.default_venv_backend = "venv"
nox.options.download_python = "never"  # an interpreter comes from this machine or not at all
nox.options.error_on_missing_interpreters = True

ROOT = Path(__file__).resolve().parent
TORCH_CPU = "2.13.0"  # PyTorch's CPU build, from the local wheel; a range would let pip take a CUDA build
TORCH = ("2.1.2", "2.7.1", "2.14.1")  # the declared floor, about halfway, the newest: PyPI's (CUDA) builds
TORCHMETRICS = ("1.3.2", "1.4.3", "1.5.2", "1.6.3", "1.7.4", "1.8.2", "1.9.0")
LIGHTNING = ("2.1.4", "2.2.5", "2.3.3", "2.4.0", "2.5.6", "2.6.6")
# The newest torchmetrics and Lightning that support each torch session's release, as they declare it: torchmetrics
# 1.9 requires torch>=2.0, Lightning 2.6 torch>=2.1.
NEWEST_FOR_TORCH = {version: (TORCHMETRICS[-1], LIGHTNING[-1]) for version in TORCH}
# PyTorch < 2.3 was built against NumPy 1: with NumPy 2 its tensor<->array conversions fail.
NUMPY_1 = "numpy<2"
# Lightning < 2.4 runs `__import__("pkg_resources")` when it is imported; setuptools 82 removed pkg_resources.
PKG_RESOURCES = {"2.1.4", "2.2.5", "2.3.3"}
SETUPTOOLS_WITH_PKG_RESOURCES = "setuptools<82"
PYTHONS = {"3.12": "3.12.1", "3.13": "3.13.0"}  # minor: pyenv's version of it


def minor(version: str) -> str:
    """``"1.3.2"`` -> ``"1.3"``."""
    return ".".join(version.split(".")[:2])


def lightning_pins(version: str) -> list[str]:
    """The pins of one Lightning release: both of its distributions, and a setuptools it can import."""
    pins = [f"lightning=={version}", f"pytorch-lightning=={version}"]
    if version in PKG_RESOURCES:
        pins.append(SETUPTOOLS_WITH_PKG_RESOURCES)
    return pins


def torch_pins(version: str) -> list[str]:
    """The pins of one PyTorch release: itself, and a NumPy it can convert arrays with."""
    pins = [f"torch=={version}"]
    if tuple(int(part) for part in version.split(".")[:2]) < (2, 3):
        pins.append(NUMPY_1)
    return pins


def install_pinned(session: nox.Session, torch: str, pins: Sequence[str], *requirements: str) -> None:
    """Install PyTorch ``torch``, then ``pins``, then ``requirements``, all under a constraints file of the pins."""
    constraints = Path(session.create_tmp()) / "constraints.txt"
    constraints.write_text("\n".join([*torch_pins(torch), *pins]) + "\n")
    session.install(*torch_pins(torch), "-c", str(constraints))
    if pins:
        session.install(*pins, "-c", str(constraints))
    session.install("-c", str(constraints), *requirements)
    session.run(
        "python",
        "-c",
        "import importlib.metadata as m; print(*(f'{d} {m.version(d)}' for d in"
        " ('torch', 'torchmetrics', 'lightning', 'pytorch-lightning', 'lightning-utilities', 'numpy', 'setuptools')),"
        " sep=', ')",
    )


def run_suite(session: nox.Session, torch: str, pins: Sequence[str]) -> None:
    """Install the pinned environment and run pytest (the whole suite, or the arguments after ``--``)."""
    # not [dev]: its tools need a newer `packaging` than old Lightning
    install_pinned(session, torch, pins, "-e", ".[test]")
    session.run("python", "-m", "pytest", "-p", "no:cacheprovider", *session.posargs)


def _register_suite(name: str, torch: str, pins: list[str], tags: list[str]) -> None:
    @nox.session(name=name, tags=tags)
    def suite(session: nox.Session) -> None:
        run_suite(session, torch, pins)

    suite.__doc__ = f"The test suite with {', '.join([*torch_pins(torch), *pins])}."


for _version in TORCHMETRICS:
    _register_suite(f"torchmetrics-{minor(_version)}", TORCH_CPU, [f"torchmetrics=={_version}"], ["torchmetrics"])
for _version in LIGHTNING:
    _register_suite(f"lightning-{minor(_version)}", TORCH_CPU, lightning_pins(_version), ["lightning"])
for _version, (_torchmetrics, _lightning) in NEWEST_FOR_TORCH.items():
    _register_suite(
        f"torch-{minor(_version)}", _version, [f"torchmetrics=={_torchmetrics}", *lightning_pins(_lightning)], ["torch"]
    )
_register_suite("oldest", TORCH[0], [f"torchmetrics=={TORCHMETRICS[0]}", *lightning_pins(LIGHTNING[0])], ["oldest"])


def interpreter(version: str) -> str:
    """This machine's Python ``version``: pyenv's build of it where there is one, else ``pythonX.Y``."""
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions" / PYTHONS[version]
    candidate = pyenv / "bin" / f"python{version}"
    return str(candidate) if candidate.exists() else f"python{version}"


TORCH_FREE_MODULES = ("bench.names", "bench.report")


def _register_python(version: str) -> None:
    @nox.session(name=f"python-{version}", python=interpreter(version), tags=["python"])
    def python(session: nox.Session) -> None:
        wheel = build(session, Path(session.create_tmp()) / "dist")["wheel"]
        session.run("python", "-W", "error", "-m", "compileall", "-q", "-f", "windowmetrics", "tests", "bench")
        session.install("--no-deps", str(wheel))  # pip checks requires-python; no dependency has a wheel here
        session.run("python", "-c", f"import {', '.join(TORCH_FREE_MODULES)}")

    python.__doc__ = f"Python {version}: compile, install the wheel without dependencies, import torch-free modules."


for _version in PYTHONS:
    _register_python(_version)


def build(session: nox.Session, out_dir: Path) -> dict[str, Path]:
    """Build the sdist and the wheel into ``out_dir`` (emptied first); return them by kind."""
    shutil.rmtree(out_dir, ignore_errors=True)
    session.install("build")
    session.run("python", "-m", "build", "--outdir", str(out_dir), ".", silent=True)
    (sdist,) = out_dir.glob("*.tar.gz")
    (wheel,) = out_dir.glob("*.whl")
    return {"sdist": sdist, "wheel": wheel}


# What the sdist ships: the package, its metadata files and nothing else (the tests and benchmarks need the
# repository: run them from a clone). A packaging change that adds or drops a file must change this list.
SDIST_FILES = {
    "CHANGELOG.md",
    "LICENSE",
    "MANIFEST.in",
    "PKG-INFO",
    "README.md",
    "pyproject.toml",
    "setup.cfg",
    "windowmetrics.egg-info/PKG-INFO",
    "windowmetrics.egg-info/SOURCES.txt",
    "windowmetrics.egg-info/dependency_links.txt",
    "windowmetrics.egg-info/requires.txt",
    "windowmetrics.egg-info/top_level.txt",
}


def package_modules() -> set[str]:
    """The package's files, as the sdist and the wheel name them."""
    return {f"windowmetrics/{path.name}" for path in (ROOT / "windowmetrics").iterdir() if path.suffix == ".py"} | {
        "windowmetrics/py.typed"
    }


@nox.session(tags=["package"])
def package(session: nox.Session) -> None:
    """Build sdist and wheel, check them, and import the wheel in a fresh venv that has PyTorch's CPU build."""
    # README.md is the long description: on the package index a relative link leads nowhere.
    relative = re.findall(r"\]\((?!https?://)([^)\s]+)\)", (ROOT / "README.md").read_text())
    if relative:
        session.error(f"README.md has relative links, which the package index cannot follow: {relative}")
    dist = build(session, ROOT / "dist")
    session.install("twine", "check-wheel-contents")
    session.run("twine", "check", "--strict", str(dist["sdist"]), str(dist["wheel"]))
    session.run("check-wheel-contents", str(dist["wheel"]))

    with tarfile.open(dist["sdist"]) as sdist:
        top = dist["sdist"].name.removesuffix(".tar.gz")
        files = {member.name.removeprefix(f"{top}/") for member in sdist.getmembers() if member.isfile()}
    expected = SDIST_FILES | package_modules()
    if files != expected:
        session.error(f"sdist files differ: extra {sorted(files - expected)}, missing {sorted(expected - files)}")
    with zipfile.ZipFile(dist["wheel"]) as wheel:
        names = set(wheel.namelist())
        info = next(name.split("/")[0] for name in names if name.endswith(".dist-info/METADATA"))
        metadata = wheel.read(f"{info}/METADATA").decode()
    if not package_modules() <= names or f"{info}/licenses/LICENSE" not in names:
        session.error(f"the wheel lacks the package's modules or its LICENSE: {sorted(names)}")
    for line in ("License-Expression: Apache-2.0", "License-File: LICENSE"):
        if line not in metadata.splitlines():
            session.error(f"the wheel's METADATA lacks {line!r}")

    # A fresh venv with PyTorch's CPU build, then the wheel and what it declares: it must import and work.
    fresh = (Path(session.create_tmp()) / "fresh").resolve()
    shutil.rmtree(fresh, ignore_errors=True)
    subprocess.run([sys.executable, "-m", "venv", str(fresh)], check=True)
    python = str(fresh / "bin" / "python")
    constraints = fresh / "constraints.txt"
    constraints.write_text(f"torch=={TORCH_CPU}\n")
    session.run(python, "-m", "pip", "install", "-q", f"torch=={TORCH_CPU}", "-c", str(constraints), external=True)
    session.run(python, "-m", "pip", "install", "-q", str(dist["wheel"]), "-c", str(constraints), external=True)
    with session.chdir(fresh):  # outside the clone: the installed wheel is imported, not the sources
        session.run(
            python,
            "-c",
            "import torch, windowmetrics; m = windowmetrics.WindowedMean(2); m(torch.tensor(1.0));"
            " assert m(torch.tensor(3.0)).item() == 2.0, 'a window of 1 and 3 must be 2';"
            " print('windowmetrics', windowmetrics.__version__, 'from', windowmetrics.__file__)",
            external=True,
        )
