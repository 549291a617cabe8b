"""One rule for the CLI's paths: ``--output-dir DIR`` is the directory of run directories in every
command, ``-o``/``--out``/``--output FILE`` the file a command writes (export, report, merge). The old
``-o DIR`` keeps working where a command writes no file, hidden from ``--help``."""

from __future__ import annotations

import json
from pathlib import Path

import click
import pytest
from helpers import cli_env, run_cli, write_qa_dataset
from test_results import rec, write_manifest, write_records

from evalledger.cli import cli

DIR_COMMANDS = ["run", "estimate", "slurm", "study", "list", "stats", "errors", "export", "report", "merge",
                "status", "verify", "prune"]
LEGACY_O_DIR = ["run", "estimate", "slurm", "study", "list", "stats", "errors"]
FILE_COMMANDS = ["export", "report", "merge"]
# Arguments that make each command's flags parse (nothing runs: only the context is built).
REQUIRED = {"run": ["-d", "gsm8k"], "estimate": ["-d", "gsm8k"], "slurm": ["-d", "gsm8k", "--shards", "2"], "stats": ["R"],
            "errors": ["R"], "export": ["R"], "report": ["R"], "merge": ["R", "-o", "m.jsonl"], "status": ["R"],
            "verify": ["R"]}


def parsed(command: str, args: list[str]) -> dict:
    cmd = cli.commands[command]
    with cmd.make_context(command, [*REQUIRED.get(command, []), *args]) as ctx:
        return ctx.params


def test_every_command_that_reads_runs_takes_output_dir():
    assert set(DIR_COMMANDS) <= set(cli.commands)
    for command in DIR_COMMANDS:
        assert parsed(command, [])["output_dir"] == Path("outputs"), command
        assert parsed(command, ["--output-dir", "elsewhere"])["output_dir"] == Path("elsewhere"), command
        helptext = cli.commands[command].get_help(click.Context(cli.commands[command]))
        assert "--output-dir" in helptext, command


@pytest.mark.parametrize("command", LEGACY_O_DIR)
def test_old_o_dir_still_works_where_no_file_is_written_and_is_hidden(command):
    assert parsed(command, ["-o", "old-style"])["output_dir"] == Path("old-style")
    helptext = cli.commands[command].get_help(click.Context(cli.commands[command]))
    assert "-o," not in helptext and "-o " not in helptext, helptext


@pytest.mark.parametrize("command", FILE_COMMANDS)
def test_o_is_the_output_file_where_a_command_writes_one(command):
    for flag in ("-o", "--out", "--output"):
        params = parsed(command, [flag, "x.out"] if command != "merge" else [flag, "x.out"])
        assert params["out_path"] == Path("x.out") and params["output_dir"] == Path("outputs"), (command, flag)
    helptext = cli.commands[command].get_help(click.Context(cli.commands[command]))
    assert "-o, --out, --output FILE" in helptext


def test_two_different_output_dirs_are_refused(tmp_path):
    r = run_cli(["list", "-o", str(tmp_path / "a"), "--output-dir", str(tmp_path / "b")], None)
    assert r.returncode == 2
    assert "--output-dir" in r.stderr and str(tmp_path / "a") in r.stderr


def test_prune_takes_the_directory_as_argument_or_output_dir(tmp_path):
    assert parsed("prune", [str(tmp_path)])["output_dir_arg"] == tmp_path
    assert parsed("prune", ["--output-dir", str(tmp_path)])["output_dir"] == tmp_path
    r = run_cli(["prune", "--output-dir", str(tmp_path), "--dry-run", "--json"], None)
    assert r.returncode == 0, r.stderr
    r = run_cli(["prune", str(tmp_path / "a"), "--output-dir", str(tmp_path / "b"), "--dry-run"], None)
    assert r.returncode == 2 and "two output directories" in r.stderr


def test_the_spellings_reach_the_same_run_end_to_end(tmp_path):
    out = tmp_path / "runs"
    write_manifest(out / "r1", sample_count=3)
    write_records(out / "r1", [rec("a"), rec("b", correct=False), rec("c", "error")])
    by_new = run_cli(["stats", "r1", "--output-dir", str(out), "--json"], None)
    by_old = run_cli(["stats", "r1", "-o", str(out), "--json"], None)
    assert by_new.returncode == by_old.returncode == 0, (by_new.stderr, by_old.stderr)
    assert json.loads(by_new.stdout)["completed_samples"] == json.loads(by_old.stdout)["completed_samples"] == 2
    listed = run_cli(["list", "-o", str(out), "--json"], None)
    assert [r["run_id"] for r in json.loads(listed.stdout)] == ["r1"]
    exported = run_cli(["export", "r1", "--output-dir", str(out), "-o", str(tmp_path / "r1.csv")], None)
    assert exported.returncode == 0, exported.stderr
    assert len((tmp_path / "r1.csv").read_text().splitlines()) == 4  # header + 3 samples


def test_bare_evalledger_prints_help_and_exits_0():
    r = run_cli([], None)
    assert r.returncode == 0, r.stderr
    assert "Usage:" in r.stdout and "Commands:" in r.stdout and "run" in r.stdout


def test_validate_prints_the_run_id_that_run_uses_with_the_same_flags(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    flags = ["-d", str(data), "-m", "openai/test-model", "--temperature", "0.7", "--max-tokens", "64",
             "--seed", "3", "--top-p", "0.9", "--output-dir", str(tmp_path / "out"), "-c", "2"]
    r = run_cli(["run", *flags, "--limit", "1", "-q", "--json"], cli_env(fake_server))
    assert r.returncode == 0, r.stderr
    run_id = json.loads(r.stdout)["run_id"]
    v = run_cli(["validate", *flags], cli_env(fake_server))
    assert v.returncode == 0, v.stderr
    assert f"run ID with these flags: {run_id}" in v.stdout
    assert fake_server.request_count == 1  # validate sent nothing
    plain = run_cli(["validate", "-d", str(data), "-m", "openai/test-model"], cli_env(fake_server))
    assert run_id not in plain.stdout  # other generation flags: another experiment, another ID


@pytest.mark.parametrize("command", ["run", "estimate", "validate", "study"])
def test_config_file_flag_where_a_command_runs_an_experiment(command):
    assert parsed(command, ["--config", "exp.toml"])["config_file"] == Path("exp.toml")
    assert parsed(command, [])["config_file"] is None


def test_dataset_comes_from_the_flag_or_the_config_file(tmp_path):
    r = run_cli(["run", "--model", "openai/m"], None, cwd=tmp_path)
    assert r.returncode == 2 and "error: --dataset is required" in r.stderr
    helptext = cli.commands["run"].get_help(click.Context(cli.commands["run"]))
    assert "--config FILE" in helptext and "--print-config" in helptext
