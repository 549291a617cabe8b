"""Start-up: nothing slow is imported before it is needed. The real CLI runs in a subprocess that
reports, as it exits, every module it imported; the figures themselves are benchmarks/bench_startup.py's."""

from __future__ import annotations

import ast
import asyncio
import importlib
import json
import os
import subprocess
import sys
import types
import uuid
from pathlib import Path

import click
import pytest
from helpers import REPO, cli_env, only_run_dir, write_qa_dataset

from evalledger.cli import COMMANDS, cli
from evalledger.lazy import lazy_exports
from evalledger.providers import ChatRequest, make_provider

SDKS = {"openai", "anthropic"}
# what a request needs beyond the SDK itself (the HTTP stack); never imported when nothing is sent
HTTP = {"httpx2", "httpcore2", "aiohttp", "pydantic"}
# the readers' columnar stack: only commands that read results into frames need it
FRAMES = {"pandas", "pyarrow", "numpy", "matplotlib"}
# evalledger's own modules that `run` never calls
NOT_FOR_RUN = {"evalledger.study", "evalledger.readers.html", "evalledger.readers.frames", "evalledger.readers.compare",
               "evalledger.ops.merge", "evalledger.ops.slurm", "evalledger.cli.results", "evalledger.cli.cluster",
               "evalledger.cli.study"}

# The CLI's own entry point (the console script's), with the modules it imported written to a
# file when the process exits, whatever its exit code.
PROBE = """
import atexit, json, sys
report_path = sys.argv[1]
def report():
    with open(report_path, "w") as f:
        json.dump(sorted(sys.modules), f)
atexit.register(report)
from evalledger.cli import main
sys.argv = ["evalledger", *sys.argv[2:]]
main()
"""


def cli_modules(args: list[str], env: dict[str, str],
                tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``evalledger ARGS`` in a subprocess; its result and the modules it imported."""
    report = tmp_path / f"modules-{uuid.uuid4().hex}.json"
    proc = subprocess.run([sys.executable, "-c", PROBE, str(report), *args], env=env, capture_output=True,
                          text=True, timeout=120)
    assert report.exists(), proc.stderr
    return proc, set(json.loads(report.read_text()))


def cli_imports(args: list[str], env: dict[str, str],
                tmp_path: Path) -> tuple[subprocess.CompletedProcess[str], set[str]]:
    """``evalledger ARGS`` in a subprocess; its result and the top-level packages it imported."""
    proc, modules = cli_modules(args, env, tmp_path)
    return proc, {m.split(".")[0] for m in modules}


def run_args(data: Path, out: Path, model: str = "openai/test-model") -> list[str]:
    return ["run", "-d", str(data), "-m", model, "--output-dir", str(out), "--quiet", "-c", "2"]


@pytest.mark.parametrize("model,sdk", [("openai/test-model", "openai"), ("anthropic/claude-test", "anthropic")])
def test_a_resume_with_nothing_pending_imports_no_sdk(fake_server, tmp_path, model, sdk):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 4)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    first, imported = cli_imports(run_args(data, out, model), env, tmp_path)
    assert first.returncode == 0, first.stderr
    assert fake_server.request_count == 4
    assert sdk in imported and "aiohttp" in imported  # what a run that sends needs: the probe sees it

    again, modules = cli_modules(run_args(data, out, model), env, tmp_path)
    assert again.returncode == 0, again.stderr
    assert "4 skipped as done" in again.stderr
    assert fake_server.request_count == 4
    imported = {m.split(".")[0] for m in modules}
    assert imported.isdisjoint(SDKS | HTTP | FRAMES), imported & (SDKS | HTTP | FRAMES)
    # nor the code of the other commands, the report or the study grid
    assert modules.isdisjoint(NOT_FOR_RUN), modules & NOT_FOR_RUN


@pytest.mark.parametrize("command", [["--help"], ["run", "--help"], ["estimate"], ["validate"], ["stats"]])
def test_commands_that_send_nothing_import_no_sdk(fake_server, tmp_path, command):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    out = tmp_path / "out"
    env = cli_env(fake_server)
    if command == ["stats"]:
        done = subprocess.run([sys.executable, "-m", "evalledger", *run_args(data, out)], env=env,
                              capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        command = ["stats", str(only_run_dir(out))]
    elif command in (["estimate"], ["validate"]):
        command = [*command, "-d", str(data), "-m", "openai/test-model", "--output-dir", str(out)]
    proc, imported = cli_imports(command, env, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert imported.isdisjoint(SDKS | HTTP), imported & (SDKS | HTTP)
    if command[0] != "stats":  # stats reads the results into Arrow tables
        assert imported.isdisjoint(FRAMES), imported & FRAMES


def without_keys(env: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in env.items() if k not in (
        "OPENAI_API_KEY", "OPENAI_BASE_URL", "ANTHROPIC_API_KEY", "ANTHROPIC_AUTH_TOKEN", "ANTHROPIC_BASE_URL")}


@pytest.mark.parametrize("model,message", [
    ("openai/gpt-4o-mini", "OPENAI_API_KEY is not set"),
    ("anthropic/claude-test", "ANTHROPIC_API_KEY is not set"),
    ("gpt-4o-mini", "say which API serves it"),
])
def test_a_missing_key_or_unknown_model_is_refused_before_anything_is_written(fake_server, tmp_path, model, message):
    """Refused cheaply: exit 2 with the reason, no output directory, and no SDK imported to find out."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 2)
    out = tmp_path / "out"
    proc, imported = cli_imports(run_args(data, out, model), without_keys(cli_env(fake_server)), tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert message in proc.stderr
    assert not out.exists()
    assert fake_server.request_count == 0
    assert imported.isdisjoint(SDKS | HTTP), imported & (SDKS | HTTP)


PROVIDER = """
import asyncio, json, sys
from evalledger.providers import make_provider
provider = make_provider(sys.argv[1], base_url="http://127.0.0.1:9", api_key="k")
made = sorted(m for m in ("openai", "anthropic", "aiohttp") if m in sys.modules)
async def started():
    await provider.start()
    try:
        return sorted(m for m in ("openai", "anthropic", "aiohttp") if m in sys.modules)
    finally:
        await provider.aclose()
print(json.dumps([made, asyncio.run(started())]))
"""


@pytest.mark.parametrize("model,sdk", [("openai/x", "openai"), ("anthropic/x", "anthropic")])
def test_making_a_provider_imports_no_sdk_and_start_imports_only_its_own(model, sdk):
    proc = subprocess.run([sys.executable, "-c", PROVIDER, model], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    assert proc.returncode == 0, proc.stderr
    made, started = json.loads(proc.stdout)
    assert made == []
    assert started == sorted([sdk, "aiohttp"])


def test_a_provider_built_lazily_still_sends_through_the_sdk_client(fake_server):
    """Without ``start``, the first request builds the client."""
    async def ask() -> str:
        provider = make_provider("openai/test-model", base_url=fake_server.openai_base_url, api_key="sk-test")
        try:
            reply = await provider.complete(ChatRequest(messages=[{"role": "user", "content": "[[ANSWER:7]]"}],
                                                        model="test-model", temperature=0.0, max_tokens=8))
            return reply.text
        finally:
            await provider.aclose()

    assert asyncio.run(ask()) == "The answer is 7.\n#### 7"
    assert fake_server.request_count == 1
    assert fake_server.requests[0].headers["authorization"] == "Bearer sk-test"


# ----------------------------------------------------------------------------------- lazy faces
SRC = REPO / "src" / "evalledger"


def lazy_faces() -> list[Path]:
    """Every ``__init__.py`` that builds its face with ``lazy_exports``."""
    return sorted(p for p in SRC.rglob("__init__.py") if "lazy_exports(" in p.read_text())


def face_tables(path: Path) -> tuple[dict[str, set[str]], dict[str, set[str]], set[str]]:
    """What a lazy face imports under ``if TYPE_CHECKING:``, what it passes to ``lazy_exports``
    (both {module: names}), and the names of its ``__all__`` it does not import itself."""
    tree = ast.parse(path.read_text())
    checked: dict[str, set[str]] = {}
    lazy: dict[str, set[str]] = {}
    declared: set[str] = set()
    eager: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom):
            eager.update(a.asname or a.name for a in node.names)
        elif isinstance(node, ast.If) and getattr(node.test, "id", "") == "TYPE_CHECKING":
            for imp in node.body:
                assert isinstance(imp, ast.ImportFrom) and imp.module
                checked.setdefault(imp.module, set()).update(a.name for a in imp.names)
        elif isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "__all__":
            declared = set(ast.literal_eval(node.value))
        elif isinstance(node, ast.Assign) and isinstance(node.value, ast.Call) and \
                getattr(node.value.func, "id", "") == "lazy_exports":
            lazy = {m: set(names) for m, names in ast.literal_eval(node.value.args[2]).items()}
    return checked, lazy, declared - eager


def test_the_lazy_faces_are_the_root_readers_ops_and_configfile():
    names = {str(p.parent.relative_to(SRC)) for p in lazy_faces()}
    assert {".", "readers", "ops", "configfile"} <= names


@pytest.mark.parametrize("path", lazy_faces(), ids=lambda p: str(p.parent.relative_to(SRC)))
def test_a_lazy_face_exports_what_it_imports_for_type_checkers(path):
    """The imports under TYPE_CHECKING (what type checkers and lint-imports see), the table of names
    imported on first use and ``__all__`` agree, and every name is its module's own object."""
    checked, lazy, declared = face_tables(path)
    assert lazy and checked == lazy
    package = "evalledger" + "".join(f".{part}" for part in path.parent.relative_to(SRC).parts)
    face = importlib.import_module(package)
    assert {n for names in lazy.values() for n in names} == declared
    for module, names in lazy.items():
        for name in names:
            assert getattr(face, name) is getattr(importlib.import_module(module), name)
    assert declared <= set(dir(face))


def test_importing_the_package_imports_no_part():
    code = ("import sys, evalledger; before = sorted(m for m in sys.modules if m.startswith('evalledger'));"
            "from evalledger import get_stats, RunConfig; print(before); "
            "print(sorted(m.split('.')[1] for m in sys.modules if m.count('.') == 1 and m.startswith('evalledger.')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    before, parts = (ast.literal_eval(line) for line in proc.stdout.splitlines())
    assert before == ["evalledger", "evalledger._version", "evalledger.lazy"]
    assert "readers" in parts and "config" in parts  # what get_stats and RunConfig need
    assert not {"run", "study", "ops", "configfile", "providers", "cli"} & set(parts), parts


def test_lazy_exports_checks_its_table_and_caches_what_it_found(monkeypatch):
    face = types.ModuleType("lazyface")
    monkeypatch.setitem(sys.modules, "lazyface", face)
    with pytest.raises(ValueError, match=r"differ: \['dumps', 'loads'\]"):
        lazy_exports("lazyface", ["dumps"], {"json": ["loads"]})
    face.__getattr__, face.__dir__ = lazy_exports("lazyface", ["dumps", "JSONDecodeError"],
                                                  {"json": ["dumps", "JSONDecodeError"]})
    assert "dumps" not in vars(face)
    assert face.dumps is json.dumps and vars(face)["dumps"] is json.dumps
    with pytest.raises(AttributeError, match="has no attribute 'nothing'"):
        face.nothing  # noqa: B018
    assert {"dumps", "JSONDecodeError"} <= set(dir(face))


def test_every_command_is_looked_up_by_its_own_name():
    """The CLI's table of commands: each entry is the click command of that name."""
    assert sorted(cli.commands) == sorted(COMMANDS)
    for name in COMMANDS:
        command = cli.get_command(click.Context(cli), name)
        assert isinstance(command, click.Command) and command.name == name


def test_the_console_script_ends_fast_yet_runs_exit_handlers_and_flushes_its_output(fake_server, tmp_path):
    """main() ends the process without the interpreter's teardown (os._exit), but only after the
    exit handlers ran and stdout/stderr were flushed, with the command's exit code."""
    data = write_qa_dataset(tmp_path / "qa.jsonl", 3)
    env = cli_env(fake_server)
    marker_file = tmp_path / "atexit-ran"
    script = ("import atexit, sys\n"
              f"atexit.register(lambda: open({str(marker_file)!r}, 'w').write('yes'))\n"
              "from evalledger.cli import main\n"
              "sys.argv = ['evalledger', *sys.argv[1:]]\n"
              "main()\n")
    ok = subprocess.run([sys.executable, "-c", script, *run_args(data, tmp_path / "out"), "--json"], env=env,
                        capture_output=True, text=True, timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["exit_code"] == 0  # the whole JSON made it out of the buffer
    assert marker_file.read_text() == "yes"
    marker_file.unlink()
    bad = subprocess.run([sys.executable, "-c", script, *run_args(data, tmp_path / "out"), "--epochs", "0"],
                         env=env, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--epochs 0" in bad.stderr and marker_file.read_text() == "yes"
