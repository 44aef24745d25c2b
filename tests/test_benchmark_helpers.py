"""The benchmark scripts' shared helpers (benchmarks/_common.py) that decide what a row runs."""

import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from _common import earlier_results, finished_run, resumable, write_result  # noqa: E402


def _argv(method):
    return ["distill", "--method", method, "--dataset", "digits", "--ipc", "1"]


def test_resumable_iterative_method_checkpoints(tmp_path):
    out = str(tmp_path / "run")
    assert resumable(_argv("dm"), out, 7) == _argv("dm") + [
        "--checkpoint-every", "7", "--log-every", "7", "--overwrite"]


def test_resumable_one_piece_method_just_reruns(tmp_path):
    # SRe2L and the closed form run in one piece: `jdd distill` refuses --checkpoint-every there
    for m in ("sre2l", "krr-closed-form"):
        assert resumable(_argv(m), str(tmp_path / m), 7) == _argv(m) + ["--overwrite"]


def test_resumable_resumes_an_interrupted_run_with_a_checkpoint(tmp_path):
    from typing import NamedTuple

    import numpy as np

    from jdd.checkpoint import RunCheckpoints, folder_of

    class State(NamedTuple):
        x: np.ndarray
        step: np.ndarray

    out = str(tmp_path / "run")
    ck = RunCheckpoints(folder_of(out), 7)
    ck.start({"options": {}}, "method: dc\n")
    # stopped before its first checkpoint: nothing to resume, so it starts again
    assert resumable(_argv("dc"), out, 7) == _argv("dc") + [
        "--checkpoint-every", "7", "--log-every", "7", "--overwrite"]
    ck.save(State(np.zeros(3, np.float32), np.int32(7)), {}, [])
    assert resumable(_argv("dc"), out, 7) == ["distill", "--resume", out]


def test_finished_run_is_reused_only_with_the_same_options(tmp_path):
    import json
    from typing import NamedTuple

    import numpy as np

    from jdd import sweep
    from jdd.checkpoint import RunCheckpoints, folder_of
    from jdd.cli import parse_distill, resolved_config

    out = str(tmp_path / "run")
    argv = _argv("dc") + ["--seeds", "2", "--out", out, "--quiet"]
    assert not finished_run(argv, out)                       # nothing there yet
    method, run_cfg, cfg = parse_distill(argv[1:])
    os.makedirs(out)
    # what a finished run leaves: its resolved options (the default steps filled in) and metrics
    (tmp_path / "run" / "config.yaml").write_text(
        sweep.dump(resolved_config(method, run_cfg, cfg), "header"))
    (tmp_path / "run" / "metrics.json").write_text(json.dumps({"method": "dc"}))
    assert finished_run(argv, out)
    # how it was written and logged does not matter; every option that shapes the result does
    assert finished_run(argv[:-1] + ["--log-every", "5", "--checkpoint-every", "5"], out)
    steps = resolved_config(method, run_cfg, cfg)["steps"]
    assert finished_run(argv + ["--steps", str(steps)], out)    # the default, given explicitly
    assert not finished_run(argv + ["--steps", str(steps + 1)], out)
    assert not finished_run(_argv("dc") + ["--out", out], out)    # 1 seed
    assert not finished_run(argv + ["--lr", "2"], out)
    assert not finished_run(["distill", "--method", "dm"] + argv[3:], out)     # another method
    assert not finished_run(argv + ["--no-such-option"], out)

    class State(NamedTuple):
        x: np.ndarray
        step: np.ndarray

    ck = RunCheckpoints(folder_of(out), 7)                   # a newer run, interrupted there
    ck.start({"options": {}}, "method: dc\n")
    ck.save(State(np.zeros(3, np.float32), np.int32(7)), {}, [])
    assert not finished_run(argv, out)
    ck.remove()
    assert finished_run(argv, out)
    (tmp_path / "run" / "metrics.json").unlink()             # a run that died before its end
    assert not finished_run(argv, out)


def test_earlier_results_are_kept_only_under_the_same_settings(tmp_path):
    path = str(tmp_path / "sweep.json")
    assert earlier_results(path, {"ipc": 10}, False) == {}          # no file yet
    write_result(path, "sweep", False, {"ipc": 10}, {"a": 1.5, "b": [2]})
    assert earlier_results(path, {"ipc": 10}, False) == {"a": 1.5, "b": [2]}
    assert earlier_results(path, {"ipc": 1}, False) == {}           # other settings
    assert earlier_results(path, {"ipc": 10}, True) == {}           # a quick run's file
    (tmp_path / "sweep.json").write_text("{not json")
    assert earlier_results(path, {"ipc": 10}, False) == {}


def test_continual_rows_resume_only_their_own_interrupted_run(tmp_path):
    import dataclasses
    import json
    from types import SimpleNamespace

    import continual as bench                      # benchmarks/continual.py
    from jdd.continual import ContinualConfig, saved_options
    args = SimpleNamespace(data_dir=None, quick=True)
    s = bench.settings("digits", 1, args)
    out = tmp_path / "row"
    assert not bench._progress_matches(str(out), s)          # nothing saved
    ck = tmp_path / "row.ckpt"
    ck.mkdir()
    opts = saved_options(dataclasses.replace(ContinualConfig(), **s))
    (ck / "identity.json").write_text(json.dumps({"options": opts}))
    assert bench._progress_matches(str(out), s)
    (ck / "identity.json").write_text(json.dumps({"options": {**opts, "dm_steps": 3}}))
    assert not bench._progress_matches(str(out), s)          # another row's settings
    for damaged in ("{damaged", "[1, 2]", '{"options": 3}'):
        (ck / "identity.json").write_text(damaged)
        assert not bench._progress_matches(str(out), s)
