"""jdd report: every run beside both baselines, robust scores and bytes; an evaluation without
baselines is never shown as a number."""

import json

from jdd.cli import main


def test_report_lists_runs_with_baselines_and_hides_numbers_without_them(tmp_path, capsys):
    a, b = tmp_path / "a", tmp_path / "b"
    common = ["distill", "--method", "unrolled", "--ipc", "1", "--steps", "2", "--inner-steps",
              "2", "--hidden", "8", "--n-models", "1", "--full-data-epochs", "1", "--quiet"]
    assert main(common + ["--out", str(a)]) == 0
    assert main(common + ["--out", str(b), "--no-eval"]) == 0
    assert main(["evaluate", str(b), "--no-baselines", "--n-models", "1", "--quiet"]) == 0
    capsys.readouterr()
    out = tmp_path / "rep"
    assert main(["report", str(a), str(b), "--out", str(out), "--title", "T"]) == 0
    text = capsys.readouterr().out
    md = (out / "report.md").read_text()
    assert md in text and md.startswith("# T") and (out / "report.png").stat().st_size > 0
    m = json.loads((a / "metrics.json").read_text())
    acc = lambda r: f"{100 * r['test_accuracy_mean']:.2f} +- {100 * r['test_accuracy_std']:.2f}"
    row_a = [line for line in md.splitlines() if line.startswith("| a | unrolled")][0]
    for r in (m["result"], m["baselines"]["random_subset"], m["baselines"]["full_data"]):
        assert acc(r) in row_a
    assert f"{m['storage']['total_bytes'] / 1024:.2f} KiB" in row_a
    # b was evaluated without baselines: its accuracy appears nowhere
    eb = json.loads(next(b.glob("eval-*.json")).read_text())
    assert acc(eb["result"]) not in md
    assert "| b | unrolled | digits | 1 | not evaluated with both baselines" in md
    assert "evaluated without baselines: not shown" in md
    rows = json.loads((out / "report.json").read_text())["runs"]
    assert [r["method"] for r in rows] == ["unrolled", "unrolled"]


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["report", str(tmp_path / "empty"), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert "not a run folder" in err and err.count("\n") == 1
    assert not (tmp_path / "r").exists()
    assert main(["report", str(tmp_path / "nope")]) == 2
    assert "no such run folder" in capsys.readouterr().err
