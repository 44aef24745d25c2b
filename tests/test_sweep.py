"""jdd distill --config: YAML runs, grids and sweeps, array-job indices, flags overriding the file,
the resolved config.yaml reproducing a run byte for byte, and bad files refused before any work."""

import os

import numpy as np
import pytest

from jdd import sweep
from jdd.artifacts import load_distilled
from jdd.cli import main

TINY = ["--steps", "2", "--n-models", "1", "--no-eval", "--quiet"]


def _write(path, text):
    path.write_text(text)
    return str(path)


# ----------------------------------------------------------------------------- expansion

def test_expand_runs_grids_and_lists_in_order():
    assert sweep.expand({"method": "kip", "lr-img": 1}) == [{"method": "kip", "lr_img": 1}]
    runs = sweep.expand({"method": "dm", "grid": {"ipc": [1, 10], "seed": [0, 1, 2]}})
    assert [(r["ipc"], r["seed"]) for r in runs] == [(1, 0), (1, 1), (1, 2), (10, 0), (10, 1),
                                                     (10, 2)]       # last varies fastest
    runs = sweep.expand([{"method": "kip"}, {"method": "dm", "grid": {"ipc": [1, 10]}}])
    assert [r["method"] for r in runs] == ["kip", "dm", "dm"]
    for doc, msg in [(3, "expected a mapping"), ([], "empty list"),
                     ({"grid": {"ipc": 1}}, "non-empty list"),
                     ({"grid": {"ipc": []}}, "non-empty list"),
                     ({"ipc": 1, "grid": {"ipc": [1]}}, "both in the grid and outside"),
                     ({"lr_img": 1, "lr-img": 2}, "given twice"),
                     ({"grid": [1, 2]}, "grid must be a mapping")]:
        with pytest.raises(sweep.SweepError, match=msg):
            sweep.expand(doc)


def test_array_index_from_the_environment():
    runs = [{"i": 0}, {"i": 1}, {"i": 2}]
    assert sweep.select(runs, "env", {"SLURM_ARRAY_TASK_ID": "2"}) == [(2, {"i": 2})]
    assert sweep.select(runs, "env", {"SGE_TASK_ID": "1"}) == [(0, {"i": 0})]     # 1-based
    assert sweep.select(runs, "env", {"LSB_JOBINDEX": "3"}) == [(2, {"i": 2})]
    assert sweep.select(runs, "1") == [(1, {"i": 1})]
    assert sweep.select(runs, None) == list(enumerate(runs))
    with pytest.raises(sweep.SweepError, match="none of SLURM_ARRAY_TASK_ID"):
        sweep.select(runs, "env", {})
    with pytest.raises(sweep.SweepError, match="SLURM_ARRAY_TASK_ID 3: the sweep has 3"):
        sweep.select(runs, "env", {"SLURM_ARRAY_TASK_ID": "3"})
    with pytest.raises(sweep.SweepError, match="not an integer"):
        sweep.select(runs, "env", {"PBS_ARRAY_INDEX": "x"})
    with pytest.raises(sweep.SweepError, match="expected an entry number"):
        sweep.select(runs, "one")


def test_out_templates_and_argv_tokens():
    assert sweep.format_out("r/{method}-{ipc}-{index}", {"method": "dm", "ipc": 10}, 4) == \
        "r/dm-10-4"
    with pytest.raises(sweep.SweepError, match=r"\{ipcc\} names no option"):
        sweep.format_out("r/{ipcc}", {"ipc": 1}, 0)
    with pytest.raises(sweep.SweepError, match="not a valid template"):
        sweep.format_out("r/{ipc", {"ipc": 1}, 0)
    assert sweep.to_argv({"ipc": 10, "quiet": True, "eval": False, "hidden": [64, 32],
                          "data_dir": None, "lr": 1e-05}) == \
        ["--ipc", "10", "--quiet", "--no-eval", "--hidden", "64", "32", "--data-dir", "",
         "--lr", "1e-05"]
    assert sweep.to_argv({"eval": False}, switches={"eval"}) == ["--no-eval"]
    for bad, shown in ((None, "null"), ("no", "'no'"), (0, "0")):
        with pytest.raises(sweep.SweepError, match=f"--eval: an on/off option; expected true or "
                                                   f"false; got {shown}"):
            sweep.to_argv({"eval": bad}, switches={"eval"})


# ----------------------------------------------------------------------------- the CLI

def test_config_run_writes_a_resolved_config_that_reproduces_it(tmp_path):
    cfg = _write(tmp_path / "run.yaml", f"""
method: kip
ipc: 1
seed: 3
batch-size: 64
learn_labels: false
out: {tmp_path / 'a'}
""")
    assert main(["distill", "--config", cfg] + TINY) == 0
    text = (tmp_path / "a" / "config.yaml").read_text()
    import yaml
    resolved = yaml.safe_load(text)
    assert resolved["method"] == "kip" and resolved["seed"] == 3
    assert resolved["batch_size"] == 64 and resolved["learn_labels"] is False
    assert resolved["steps"] == 2 and resolved["kernel"] == "fc-ntk"    # defaults filled in
    assert "config.yaml" in (tmp_path / "a" / "manifest.json").read_text()
    # reproduce it from the run folder into a new one: the same bytes
    assert main(["distill", "--config", str(tmp_path / "a" / "config.yaml"), "--out",
                 str(tmp_path / "b")]) == 0
    a, b = load_distilled(tmp_path / "a"), load_distilled(tmp_path / "b")
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert yaml.safe_load((tmp_path / "b" / "config.yaml").read_text()) == {
        **resolved, "out": str(tmp_path / "b"), "overwrite": False, "quiet": True}


def test_a_grid_sweep_runs_every_entry_and_flags_override_the_file(tmp_path, capsys):
    cfg = _write(tmp_path / "sweep.yaml", f"""
method: kip
steps: 50
out: {tmp_path}/kip-ipc{{ipc}}-{{index}}
grid:
  ipc: [1, 2]
""")
    assert main(["distill", "--config", cfg] + TINY) == 0     # --steps 2 beats the file's 50
    for i, ipc in enumerate((1, 2)):
        ds = load_distilled(tmp_path / f"kip-ipc{ipc}-{i}")
        assert ds.meta["ipc"] == ipc and ds.meta["steps"] == 2
    # one entry of it, as an array task; an existing run is refused before anything runs
    os.environ["JDD_SWEEP_INDEX"] = "1"
    try:
        assert main(["distill", "--config", cfg, "--index", "env"] + TINY) == 2
        assert "already holds" in capsys.readouterr().err
        assert main(["distill", "--config", cfg, "--index", "env", "--dry-run"] + TINY) == 0
        out = capsys.readouterr().out
        assert out.count("method: kip") == 1 and "kip-ipc2-1" in out
    finally:
        del os.environ["JDD_SWEEP_INDEX"]


@pytest.mark.parametrize("text, msg", [
    ("method: kip\nout: X\nlr_imgg: 3\n", "unknown option(s) lr_imgg for --method kip"),
    ("out: X\n", "no method"),
    ("method: kipp\nout: X\n", "unknown method 'kipp'"),
    ("method: kip\nout: X\nsteps: 0\n", "--steps: expected an integer >= 1"),
    ("method: kip\nout: X\nreg: .nan\n", "--reg: expected"),
    ("method: dm\nout: X\nhidden: {a: 1}\n", "expected a value or a list"),
    ("method: kip\nout: X\nipc: [1\n", "not valid YAML at line 4"),
    ("", "the file is empty"),
    ("- method: kip\n  out: X\n- method: kip\n  out: X\n", "2 entries of the sweep write there"),
    ("method: kip\nout: X/{seeed}\n", "names no option"),
    ("method: kip\nout: X\ngrid: {steps: [1, -1]}\n", "entry 1: --steps: expected"),
    ("method: kip\nout: X\nipc: null\n",
     "--ipc: expected an integer >= 1 and <= 100000; got nothing"),
    ("method: kip\nout: X\nlearn_labels: null\n",
     "--learn-labels: an on/off option; expected true or false; got null"),
    ("method: kip\nout: X\ngrid: {eval: [true, 1]}\n",
     "entry 1: --eval: an on/off option; expected true or false; got 1"),
])
def test_bad_config_files_are_refused_before_any_work(tmp_path, capsys, monkeypatch, text, msg):
    import jdd.cli as cli
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data were loaded"))
    path = _write(tmp_path / "bad.yaml", text.replace("X", str(tmp_path / "out")))
    assert main(["distill", "--config", path]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err
    assert not (tmp_path / "out").exists()


def test_null_is_none_for_an_option_that_takes_none(tmp_path):
    """``batch_size: null`` is KIP on the whole training set (the default batch is 256); a key
    left out keeps its default."""
    from jdd.cli import parse_distill_runs
    from jdd.distill.kip import KipConfig
    path = _write(tmp_path / "run.yaml", f"""
method: kip
batch_size: null
full_data_max: null
lr: null
out: {tmp_path / 'a'}
""")
    (_, _, cfg), = parse_distill_runs(["--config", path])[0]
    assert cfg.batch_size is None and cfg.full_data_max is None and cfg.lr is None
    path = _write(tmp_path / "run2.yaml", f"method: kip\nout: {tmp_path / 'b'}\n")
    (_, _, cfg), = parse_distill_runs(["--config", path])[0]
    default = KipConfig()
    assert default.batch_size is not None and default.full_data_max is not None
    assert (cfg.batch_size, cfg.full_data_max) == (default.batch_size, default.full_data_max)


def test_missing_config_and_index_without_config(tmp_path, capsys):
    assert main(["distill", "--config", str(tmp_path / "nope.yaml")]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["distill", "--method", "kip", "--index", "1", "--out", str(tmp_path)]) == 2
    assert "--index: needs --config" in capsys.readouterr().err
    assert main(["distill", "--out", str(tmp_path / "o")]) == 2
    assert "--method: expected a method" in capsys.readouterr().err
