"""Config files: ``run --config`` / ``study --config`` (TOML), ``--print-config``, and the messages a
bad key or value gets (file, line, what is allowed)."""

from __future__ import annotations

import math
import re
import subprocess
import tomllib
from pathlib import Path

import click
import pytest
from helpers import assert_error_at_line, cli_env, run_cli, write_qa_dataset

from evalledger import RunConfig, load_run_config, run_config_toml
from evalledger.cli.options import EXPERIMENT_OPTIONS
from evalledger.configfile import RUN_KEYS, key_lines
from evalledger.configfile.emit import toml_value


def run_id_of(result: subprocess.CompletedProcess[str]) -> str:
    """The run ID `evalledger validate` prints."""
    assert result.returncode == 0, result.stderr
    found = re.search(r"run ID with these flags: (\S+)", result.stdout)
    assert found, result.stdout
    return found.group(1)


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# The keys are run's flags


def _click_option(name: str) -> click.Option:
    def probe() -> None:
        """Carries the option."""

    EXPERIMENT_OPTIONS[name](probe)
    return probe.__click_params__[0]  # type: ignore[attr-defined]


def test_every_run_flag_is_a_key_of_the_same_type_and_default():
    """A file key per `run` flag (its long name), typed as the flag, with the flag's default: so
    --print-config leaves out exactly what the command line leaves at its default."""
    assert {o.field for o in RUN_KEYS.values()} == set(EXPERIMENT_OPTIONS)
    kinds = {click.INT: "integer", click.FLOAT: "number"}
    for field, _ in EXPERIMENT_OPTIONS.items():
        option = _click_option(field)
        longest = max((o for o in option.opts if o.startswith("--")), key=len)
        key = RUN_KEYS[longest[2:]]
        assert key.field == field
        if option.is_flag:
            assert key.kind == "boolean", field
        elif option.type in kinds:
            assert key.kind == kinds[option.type], field
        elif option.metavar == "FILE" or isinstance(option.type, click.Path):
            assert key.kind == "path", field
        default = option.default
        if option.is_flag and type(default) is not bool:
            default = False  # click >= 8.3 keeps an unset flag's default as a sentinel: off
        if field == "output_dir":
            default = Path("outputs")  # the option's callback fills it in
        assert default == key.default, (field, default, key.default)


# --------------------------------------------------------------------------------------------
# run --config


def test_a_command_and_its_config_file_give_the_same_run_id_and_config(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "data.jsonl", 4)
    prompt = write(tmp_path / "review.txt", "Check it again.\n")
    flags = ["--dataset", "data.jsonl", "--model", "openai/m1", "--task", "self-correct", "--temperature", "0.5",
             "--max-tokens", "64", "--top-p", "0.9", "--seed", "7", "--review-prompt", "review.txt",
             "--concurrency", "2", "--no-adaptive-concurrency", "--shard", "1/1", "--output-dir", "runs", "--quiet"]
    write(tmp_path / "exp.toml", """
dataset = "data.jsonl"
model = "openai/m1"
task = "self-correct"
temperature = 0.5
max_tokens = 64          # underscores work too
top-p = 0.9
seed = 7
review-prompt = "review.txt"
concurrency = 2
adaptive-concurrency = false
shard = "1/1"
output-dir = "runs"
quiet = true
""")
    env = cli_env(fake_server)
    by_flags = run_id_of(run_cli(["validate", *flags], env, cwd=tmp_path))
    by_file = run_id_of(run_cli(["validate", "--config", "exp.toml"], env, cwd=tmp_path))
    assert by_flags == by_file
    # the same RunConfig: the file's relative paths are read from its directory (here the cwd)
    expected = RunConfig(dataset=str(data), model="openai/m1", task="self-correct", temperature=0.5, max_tokens=64,
                         top_p=0.9, seed=7, review_prompt=str(prompt), concurrency=2, adaptive_concurrency=False,
                         shard=(1, 1), output_dir=tmp_path / "runs", quiet=True)
    assert load_run_config(tmp_path / "exp.toml") == expected
    # end to end: the run the flags made is the run the file resumes (nothing sent again)
    first = run_cli(["run", *flags], env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    sent = fake_server.request_count
    assert sent == 2 * 4
    again = run_cli(["run", "--config", "exp.toml"], env, cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    assert fake_server.request_count == sent and by_flags in again.stderr


def test_relative_paths_are_read_from_the_file_directory_and_builtin_names_stay(tmp_path):
    (tmp_path / "conf").mkdir()
    write_qa_dataset(tmp_path / "conf" / "data.jsonl", 2)
    write(tmp_path / "conf" / "exp.toml", 'dataset = "data.jsonl"\nprices = "p.toml"\noutput-dir = "../out"\n'
                                          'fewshot = 2\nfewshot-from = "gsm8k"\n')
    config = load_run_config(tmp_path / "conf" / "exp.toml")
    assert config.dataset == str(tmp_path / "conf" / "data.jsonl")
    assert config.prices_file == str(tmp_path / "conf" / "p.toml")
    assert config.output_dir == tmp_path / "conf" / ".." / "out"
    assert config.fewshot_from == "gsm8k"  # a built-in name is not a path
    write(tmp_path / "b.toml", 'dataset = "gsm8k"\nreview-prompt = "/abs/r.txt"\n')
    config = load_run_config(tmp_path / "b.toml")
    assert (config.dataset, config.review_prompt) == ("gsm8k", "/abs/r.txt")


def test_command_line_flags_override_the_file(fake_server, tmp_path):
    write_qa_dataset(tmp_path / "data.jsonl", 2)
    write(tmp_path / "exp.toml", 'dataset = "data.jsonl"\nmodel = "openai/m1"\nconcurrency = 4\nmax-tokens = 64\n'
                                 'output-dir = "from-file"\nresume = false\n')
    env = cli_env(fake_server)
    r = run_cli(["run", "--config", "exp.toml", "--concurrency", "3", "-o", "legacy", "--resume", "--print-config"],
                env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    printed = tomllib.loads(r.stdout)
    assert printed["concurrency"] == 3 and printed["max-tokens"] == 64
    assert printed["output-dir"] == str(tmp_path / "legacy") and "resume" not in printed  # back at its default
    # an identity flag given on the command line changes the run ID the file alone gives
    file_only = run_id_of(run_cli(["validate", "--config", "exp.toml"], env, cwd=tmp_path))
    overridden = run_id_of(run_cli(["validate", "--config", "exp.toml", "--max-tokens", "32"], env, cwd=tmp_path))
    assert file_only != overridden
    assert overridden == run_id_of(run_cli(["validate", "-d", "data.jsonl", "-m", "openai/m1", "--max-tokens", "32"],
                                           env, cwd=tmp_path))
    # from Python: overrides are RunConfig fields
    config = load_run_config(tmp_path / "exp.toml", concurrency=5, shard=(2, 3))
    assert (config.concurrency, config.shard, config.max_tokens) == (5, (2, 3), 64)


def test_print_config_round_trip_gives_the_same_run_id(fake_server, tmp_path):
    write_qa_dataset(tmp_path / "data.jsonl", 3)
    env = cli_env(fake_server, MY_KEY="sk-very-secret")
    flags = ["-d", "data.jsonl", "-m", "openai/m1", "--temperature", "0.25", "--max-tokens", "48", "--seed", "3",
             "--id-column", "id", "--epochs", "2", "--limit", "2", "--fewshot", "1", "--fewshot-from", "data.jsonl",
             "--api-key-env", "MY_KEY", "--shard", "2/3", "--no-retry-errors", "--fsync", "always", "--rpm", "60"]
    printed = run_cli(["run", *flags, "--print-config"], env, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert not (tmp_path / "outputs").exists()  # nothing ran
    assert "sk-very-secret" not in printed.stdout and 'api-key-env = "MY_KEY"' in printed.stdout
    values = tomllib.loads(printed.stdout)
    assert values["dataset"] == str(tmp_path / "data.jsonl")  # absolute: the file means the same anywhere
    assert (values["epochs"], values["fewshot"], values["shard"], values["retry-errors"]) == (2, 1, "2/3", False)
    assert "concurrency" not in values and "quiet" not in values  # defaults are left out
    # saved elsewhere and fed back: the same run ID, and printing it again gives the same file
    saved = write(tmp_path / "elsewhere" / "exp.toml", printed.stdout)
    assert run_id_of(run_cli(["validate", *flags], env, cwd=tmp_path)) == \
        run_id_of(run_cli(["validate", "--config", str(saved)], env, cwd=tmp_path / "elsewhere"))
    again = run_cli(["run", "--config", str(saved), "--print-config"], env, cwd=tmp_path / "elsewhere")
    assert again.stdout == printed.stdout


def test_print_config_from_python_never_holds_the_api_key():
    config = RunConfig(dataset="gsm8k", model="openai/m", api_key="sk-secret-123", concurrency=3)
    text = run_config_toml(config)
    assert "sk-secret-123" not in text and "api-key" not in text
    assert tomllib.loads(text) == {"dataset": "gsm8k", "model": "openai/m", "concurrency": 3}


BAD_RUN_FILES = [
    # (file text, line, fragments of the message)
    ('dataset = "gsm8k"\n\nconcurency = 3\n', 3, ["unknown key 'concurency'", "did you mean 'concurrency'",
                                                  "the keys here are: adaptive-concurrency,", "tpm"]),
    ('dataset = "gsm8k"\nconcurrency = "8"\n', 2, ['concurrency = "8": expected a whole number (as --concurrency']),
    ('dataset = "gsm8k"\nconcurrency = 2.5\n', 2, ["expected a whole number"]),
    ('dataset = "gsm8k"\ntemperature = true\n', 2, ["temperature = true: expected a number"]),
    ('dataset = "gsm8k"\nresume = "no"\n', 2, ['resume = "no": expected true or false (as --resume/--no-resume']),
    ('dataset = "gsm8k"\n# a comment\nfsync = "sometimes"\n', 3, ["--fsync 'sometimes': choose always, batch or off"]),
    ('dataset = "gsm8k"\nshard = "5/4"\n', 2, ['shard = "5/4"', "K must be between 1 and N"]),
    ('dataset = "gsm8k"\nshard = 2\n', 2, ['expected a string K/N such as "2/4"']),
    ('dataset = "gsm8k"\nconcurrency = 0\n', 2, ["--concurrency 0: must be at least 1"]),
    ('dataset = "gsm8k"\nmax-tokens = 3\nmax_tokens = 4\n', 3, ["'max-tokens' is given twice"]),
    ('dataset = "gsm8k"\napi-key = "sk-x"\n', 2, ["never goes in a config file", "api-key-env"]),
    ('dataset = "gsm8k"\nkeep-old = 1\n', 2, ["--keep-old applies to the copies --overwrite moves aside"]),
    ('dataset = "gsm8k"\nlimit = [1, 2]\n', 2, ["limit = [1, 2]: expected a whole number"]),
    ('dataset = "gsm8k"\n[extra]\nx = 1\n', 2, ["unknown key 'extra'"]),
    ('dataset = "gsm8k"\nmodel = "anthropic/c"\ntemperature = 0.5\n', 3, ["--temperature/--top-p with --model"]),
    ('dataset = "gsm8k"\nseed = \n', 2, ["not valid TOML"]),
    ('model = "openai/m"\ndataset = ""\n', 2, ['dataset = "": expected a path, not an empty string']),
]


@pytest.mark.parametrize(("text", "line", "fragments"), BAD_RUN_FILES)
def test_each_bad_key_or_value_names_the_file_the_line_and_what_is_allowed(tmp_path, text, line, fragments):
    assert_error_at_line(load_run_config, write(tmp_path / "exp.toml", text), line, fragments)


def test_bad_files_on_the_command_line_exit_2_before_anything(fake_server, tmp_path):
    env = cli_env(fake_server)
    write(tmp_path / "exp.toml", 'dataset = "gsm8k"\nmodel = "openai/m"\n\nrpm = "fast"\n')
    r = run_cli(["run", "--config", "exp.toml"], env, cwd=tmp_path)
    assert r.returncode == 2 and 'error: exp.toml line 4: rpm = "fast": expected a number (as --rpm takes)' in r.stderr
    missing = run_cli(["run", "--config", "nope.toml"], env, cwd=tmp_path)
    assert missing.returncode == 2 and "--config nope.toml: file not found" in missing.stderr
    write(tmp_path / "empty.toml", "# nothing\n")
    no_dataset = run_cli(["estimate", "--config", "empty.toml"], env, cwd=tmp_path)
    assert no_dataset.returncode == 2 and "empty.toml: no dataset" in no_dataset.stderr
    # a bad value given on the command line is the flag's fault, not the file's
    flag = run_cli(["run", "--config", "empty.toml", "-d", "gsm8k", "--concurrency", "0"], env, cwd=tmp_path)
    assert flag.returncode == 2 and "error: --concurrency 0: must be at least 1" in flag.stderr
    assert fake_server.request_count == 0 and not (tmp_path / "outputs").exists()


# --------------------------------------------------------------------------------------------
# Reading and writing TOML


def test_key_lines_finds_each_key_and_element():
    text = '''# a comment with key = value
datasets = ["gsm8k",
  { dataset = "h.jsonl", limit = 3 },   # an inline table
  'b.jsonl']
"quoted.key" = """a multi-line string
limit = 99 (not a key)
"""
[shared]
a.b = 1
[[models]]
model = "openai/x"

[[models]]
name = 'y'
concurrency = 2
[models.sub]
k = 1
'''
    assert tomllib.loads(text)  # valid TOML
    lines = key_lines(text)
    assert lines[("datasets",)] == 2 and lines[("datasets", 0)] == 2
    assert lines[("datasets", 1, "limit")] == 3 and lines[("datasets", 2)] == 4
    assert lines[("quoted.key",)] == 5 and ("limit",) not in lines
    assert lines[("shared", "a", "b")] == 9
    assert lines[("models", 0, "model")] == 11 and lines[("models", 1)] == 13
    assert lines[("models", 1, "concurrency")] == 15 and lines[("models", 1, "sub", "k")] == 17


@pytest.mark.parametrize("value", ['say "hi"\\ back', "tab\there\nnew line", "\x00\x1f\x7f", "snow ☃ and 😀",
                                   "", 0, -3, 2.5, 1e-05, 1e300, True, False, ["a", 1, 2.0]])
def test_toml_values_read_back_as_written(value):
    assert tomllib.loads(f"k = {toml_value(value)}")["k"] == value


def test_toml_infinity_reads_back():
    assert math.isinf(tomllib.loads(f"k = {toml_value(float('inf'))}")["k"])
