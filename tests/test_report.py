"""The HTML report: self-contained, real images, numbers equal to get_stats, one run or a study.

One test renders the report in headless Chromium (Debian's ``chromium``) and checks the
screenshot is a real page; it is skipped, saying why, where Chromium is not installed.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
import subprocess
import tempfile
from html.parser import HTMLParser
from pathlib import Path

import pytest
from fakeserver import answer_from_marker, last_user_text
from helpers import cli_env, marker, run_cli, write_qa_dataset
from PIL import Image
from test_results import cfg, rec, write_manifest, write_records

from evalledger.readers import get_stats, load_results
from evalledger.run import run_experiment

VOLATILE = {"running", "writers", "eta_s", "size_bytes"}  # may differ between two reads a moment apart


class _Page(HTMLParser):
    """Collects what the tests check: images, numeric cells, sample rows, links, the stats JSON."""

    def __init__(self) -> None:
        super().__init__()
        self.images: list[str] = []
        self.cells: list[dict[str, str]] = []  # data-key/data-value cells, with the run of their row
        self.sample_kinds: list[str] = []
        self.urls: list[str] = []
        self.run_rows: list[str] = []
        self._run: str | None = None
        self._in_stats = False
        self._cell: dict[str, str] | None = None
        self.stats_json = ""

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "img":
            self.images.append(a["src"])
        for k in ("src", "href"):
            if k in a and not a[k].startswith(("data:", "#")):
                self.urls.append(a[k])
        if tag == "tr" and "data-run" in a:
            self._run = a["data-run"]
            self.run_rows.append(a["data-run"])
        if tag == "tr" and "data-kinds" in a:
            self.sample_kinds.append(a["data-kinds"])
        if tag == "td" and "data-key" in a:
            self.cells.append({"run": self._run or "", "key": a["data-key"], "value": a["data-value"]})
            self._cell = self.cells[-1]
        if tag == "script" and a.get("id") == "stats":
            self._in_stats = True

    def handle_endtag(self, tag: str) -> None:
        if tag == "script":
            self._in_stats = False
        if tag == "td":
            self._cell = None

    def handle_data(self, data: str) -> None:
        if self._in_stats:
            self.stats_json += data
        if self._cell is not None:
            self._cell["text"] = self._cell.get("text", "") + data


def parse(path: Path) -> _Page:
    page = _Page()
    page.feed(path.read_text(encoding="utf-8"))
    return page


def assert_real_pngs(page: _Page, at_least: int) -> None:
    assert len(page.images) >= at_least, len(page.images)
    for src in page.images:
        assert src.startswith("data:image/png;base64,")
        img = Image.open(io.BytesIO(base64.b64decode(src.split(",", 1)[1])))
        img.load()
        assert img.format == "PNG" and img.width >= 300 and img.height >= 100
        assert len(img.convert("RGB").getcolors(1 << 20) or []) > 5  # a plot, not a blank image


def test_report_of_a_run_is_self_contained_and_matches_get_stats(fake_server, tmp_path):
    data = write_qa_dataset(tmp_path / "qa.jsonl", 30)
    fake_server.fail_when(marker(4), 400)
    fake_server.fail_when(marker(9), 400)
    s = run_experiment(cfg(fake_server, data, tmp_path / "out"))
    assert s.exit_code == 1
    r = run_cli(["report", s.run_id, "--output-dir", str(tmp_path / "out"), "-o", str(tmp_path / "r.html")],
                cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = parse(tmp_path / "r.html")
    stats = get_stats(s.run_id, output_dir=tmp_path / "out")

    assert page.urls == []  # nothing fetched from anywhere: the file is the whole report
    text = (tmp_path / "r.html").read_text()
    assert not re.search(r"https?://", text)
    assert_real_pngs(page, at_least=4)  # accuracy, tokens/cost, latency, errors
    assert page.run_rows == [s.run_id]
    shown = {c["key"]: json.loads(c["value"]) if c["value"] else None for c in page.cells}
    for key in ("completed_samples", "error_count", "accuracy", "accuracy_ci95", "input_tokens", "cost_usd"):
        assert shown[key] == stats[key], key
    embedded = json.loads(page.stats_json)[0]
    assert {k: v for k, v in embedded.items() if k not in VOLATILE} == {
        k: v for k, v in json.loads(json.dumps(stats, default=str)).items() if k not in VOLATILE}
    # The sample browser: 28 correct + 2 errors, each error row tagged for the "error" filter.
    assert len(page.sample_kinds) == 30
    assert sum("error" in k.split() for k in page.sample_kinds) == stats["error_count"] == 2
    assert "Question 3: what is 3 + 0?" in text and "The answer is 7." in text  # prompt and response


def test_report_status_column_shows_each_runs_state_as_stats_does(fake_server, tmp_path):
    """An interrupted run (a fatal 401 before any answer), a complete one and one with error records:
    the report's status column says what ``stats`` and ``list`` say, never a made-up 'idle'."""
    out = tmp_path / "out"
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    fake_server.fail_when(marker(2), 400)
    with_errors = run_experiment(cfg(fake_server, data, out, run_id="errs"))
    fake_server.clear_faults()
    complete = run_experiment(cfg(fake_server, data, out, run_id="done"))
    fake_server.fail_always(status=401)
    fatal = run_experiment(cfg(fake_server, data, out, run_id="fatal", cache=False))  # the cache would answer all
    assert (with_errors.exit_code, complete.exit_code, fatal.exit_code) == (1, 0, 2)

    r = run_cli(["report", str(out), "-o", str(tmp_path / "r.html")], cli_env(fake_server), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = parse(tmp_path / "r.html")
    shown = {c["run"]: (json.loads(c["value"]), c["text"]) for c in page.cells if c["key"] == "state"}
    for run_id in ("errs", "done", "fatal"):
        st = get_stats(run_id, output_dir=out)
        assert shown[run_id] == (st["state"], st["state_label"]), run_id
    assert shown["fatal"] == ("interrupted", "interrupted (fatal provider error, exit 2)")
    assert shown["done"] == ("complete", "complete")
    assert shown["errs"][0] == "incomplete"
    assert "idle" not in (tmp_path / "r.html").read_text()


def test_report_of_a_study_directory_with_self_correction(tmp_path):
    out = tmp_path / "study"
    write_manifest(out / "a", model="openai/a", dataset="gsm8k", sample_count=4)
    write_records(out / "a", [rec("1", cost=0.01), rec("2", correct=False, cost=0.01), rec("3", "error", cost=0.0),
                              rec("4", cost=0.02)])
    write_manifest(out / "b", model="openai/b", dataset="gsm8k", task="self_correct", sample_count=4)
    sc = [(True, True), (False, True), (False, True), (True, False)]
    write_records(out / "b", [rec(str(i), correct=after, cost=0.03,
                                  extra={"correct_before": before, "correct_after": after})
                              for i, (before, after) in enumerate(sc)])
    html_path = tmp_path / "study.html"
    r = run_cli(["report", str(out), "-o", str(html_path), "--samples", "2"], dict(os.environ), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "2 runs" in r.stderr
    page = parse(html_path)
    assert page.run_rows == ["a", "b"]
    assert_real_pngs(page, at_least=5)  # + the self-correction heat map
    text = html_path.read_text()
    assert "Self-correction" in text and 'alt="self-correction b"' in text
    stats = {s["run_id"]: s for s in json.loads(page.stats_json)}
    assert stats["b"]["transitions"] == {"correct→correct": 1, "correct→incorrect": 1,
                                         "incorrect→correct": 2, "incorrect→incorrect": 0}
    assert stats["b"]["accuracy_before"] == 0.5 and stats["b"]["accuracy_after"] == 0.75
    assert "transitions" not in stats["a"]
    cost = {c["run"]: json.loads(c["value"]) for c in page.cells if c["key"] == "cost_per_correct_usd"}
    assert cost["a"] == pytest.approx(0.04 / 2) and cost["b"] == pytest.approx(0.12 / 3)
    # --samples 2: at most two rows per group and run, and the one error is there.
    assert sum("error" in k.split() for k in page.sample_kinds) == 1
    assert sum("all" in k.split() for k in page.sample_kinds) == 4


def _b_wrong_on_1_and_2(body):
    m = re.search(r"\[\[ANSWER:(\d+)\]\]", last_user_text(body))
    return "#### 999" if body.get("model") == "b" and m and int(m.group(1)) in (1, 2) else answer_from_marker(body)


def test_report_of_a_study_shows_each_run_against_the_first_on_its_dataset(fake_server, tmp_path):
    fake_server.responder = _b_wrong_on_1_and_2
    data = write_qa_dataset(tmp_path / "qa.jsonl", 5)
    other = write_qa_dataset(tmp_path / "other.jsonl", 3, start=50)
    env, out = cli_env(fake_server), tmp_path / "out"
    for model, dataset in (("a", data), ("b", data), ("a", other)):
        r = run_cli(["run", "--dataset", str(dataset), "--model", f"openai/{model}", "--output-dir", str(out),
                     "--quiet"], env, cwd=tmp_path)
        assert r.returncode == 0, r.stderr
    html_path = tmp_path / "study.html"
    r = run_cli(["report", str(out), "-o", str(html_path)], env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    page = parse(html_path)
    cells = {c["key"]: json.loads(c["value"]) for c in page.cells
             if c["key"] in ("n", "accuracy_a", "accuracy_b", "difference", "p_value", "discordant")}
    # b against a on qa.jsonl only (other.jsonl has one run): 5 paired, a 100 %, b 60 %, 2 discordant for a
    assert cells == {"n": 5, "accuracy_a": 1.0, "accuracy_b": 0.6, "difference": pytest.approx(-0.4),
                     "p_value": pytest.approx(0.5), "discordant": [2, 0]}
    assert html_path.read_text().count("<tr data-compare=") == 1


def test_self_correct_run_gets_transition_columns_stats_and_heat_map(tmp_path):
    """A real run of the self-correct task: turn 1 is wrong for even samples, turn 2 always right."""
    from fakeserver import FakeServer, answer_from_marker, message_texts

    def responder(body: dict) -> str:
        reply = answer_from_marker(body)
        first_turn = sum(1 for role, _ in message_texts(body) if role == "user") == 1
        k = int(reply.rsplit("#### ", 1)[1])
        return "The answer is 999.\n#### 999" if first_turn and k % 2 == 0 else reply

    data = write_qa_dataset(tmp_path / "qa.jsonl", 8)
    with FakeServer(responder=responder) as server:
        s = run_experiment(cfg(server, data, tmp_path / "out", task="self-correct"))
    assert s.exit_code == 0, s.message
    df = load_results(s.run_id, output_dir=tmp_path / "out")
    assert str(df["correct_before"].dtype) == "boolean"
    assert list(df["correct_before"]) == [i % 2 == 1 for i in range(8)] and df["correct_after"].all()
    assert set(df["transition"]) == {"incorrect→correct", "correct→correct"}
    stats = get_stats(s.run_id, output_dir=tmp_path / "out")
    assert stats["transitions"]["incorrect→correct"] == 4 and stats["transitions"]["correct→correct"] == 4
    assert (stats["accuracy_before"], stats["accuracy_after"]) == (0.5, 1.0)
    html_path = tmp_path / "sc.html"
    assert run_cli(["report", str(s.run_dir), "-o", str(html_path)], dict(os.environ)).returncode == 0
    page = parse(html_path)
    assert f'alt="self-correction {s.run_id}"' in html_path.read_text()
    assert_real_pngs(page, at_least=4)  # accuracy, self-correction, tokens, latency (no errors: no error plot)


def test_cost_plot_of_free_models_shows_tokens_not_an_empty_axis(tmp_path):
    """Runs that cost $0 (the embedded model) make zero-length cost bars: the report plots their
    tokens instead and says why; one paid run among them brings the cost plot back, the free one
    marked as such."""
    out = tmp_path / "out"
    for name in ("free-a", "free-b"):
        write_manifest(out / name, model="local/smollm2", sample_count=3)
        write_records(out / name, [rec(f"s{i}", cost=0.0, tokens=(100 + i, 20)) for i in range(3)])
    assert run_cli(["report", str(out), "-o", str(tmp_path / "free.html")], dict(os.environ)).returncode == 0
    text = (tmp_path / "free.html").read_text()
    assert 'alt="tokens per run (cost $0: free models)"' in text
    assert 'alt="cost per run and per correct answer"' not in text

    write_manifest(out / "paid", sample_count=3)
    write_records(out / "paid", [rec(f"s{i}", cost=0.002) for i in range(3)])
    assert run_cli(["report", str(out), "-o", str(tmp_path / "mixed.html")], dict(os.environ)).returncode == 0
    assert 'alt="cost per run and per correct answer"' in (tmp_path / "mixed.html").read_text()


def test_report_of_nothing_fails_clearly(tmp_path):
    r = run_cli(["report", str(tmp_path / "nowhere"), "-o", str(tmp_path / "x.html")], dict(os.environ), cwd=tmp_path)
    assert r.returncode == 2 and "nowhere" in r.stderr and "neither a run" in r.stderr
    assert not (tmp_path / "x.html").exists()


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(tmp_path):
    out = tmp_path / "out"
    write_manifest(out / "r", sample_count=40)
    write_records(out / "r", [rec(f"s{i:02d}", correct=i % 3 != 0, latency=0.5 + i / 20, at=i, cost=0.001)
                              for i in range(36)] + [rec(f"e{i}", "error", at=40 + i) for i in range(4)])
    html_path = tmp_path / "r.html"
    assert run_cli(["report", str(out / "r"), "-o", str(html_path)], dict(os.environ)).returncode == 0
    png = tmp_path / "r.png"
    args: list[str] = [CHROMIUM or "chromium", "--headless", "--disable-gpu", "--disable-background-networking",
                       "--disable-component-update", "--no-first-run", "--disable-sync",
                       f"--user-data-dir={tempfile.mkdtemp(dir=tmp_path)}", f"--screenshot={png}",
                       "--window-size=1280,1600", html_path.as_uri()]
    if os.geteuid() == 0:
        args.insert(2, "--no-sandbox")  # Chromium refuses to run as root with its sandbox
    subprocess.run(args, capture_output=True, timeout=120, check=False)
    assert png.exists(), "chromium wrote no screenshot"
    # The DOM as the browser built it: the status column shows the run's state as get_stats has it.
    dom_args = [a for a in args if not a.startswith(("--screenshot", "--window-size"))]
    dom_args.insert(-1, "--dump-dom")
    dom = subprocess.run(dom_args, capture_output=True, text=True, timeout=120, check=False).stdout
    label = get_stats(out / "r")["state_label"]
    assert f'data-key="state" data-value="&quot;unknown&quot;">{label}</td>' in dom, dom[-2000:]
    img = Image.open(png).convert("RGB")
    assert img.size == (1280, 1600)
    # A rendered page has text, plot colours and table shading; a blank or error page has a few colours.
    assert len(img.getcolors(1 << 24) or []) > 200
    import numpy as np

    small = np.asarray(img.resize((64, 80)), dtype=int)
    non_white = int((small.sum(axis=2) < 720).sum())
    assert non_white > 500, non_white
