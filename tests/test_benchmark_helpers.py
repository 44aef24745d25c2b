"""The benchmark scripts' shared helpers (benchmarks/_common.py) that decide what a row runs."""

import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                                "benchmarks"))
from _common import resumable  # noqa: E402


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


def test_resumable_resumes_an_interrupted_run(tmp_path):
    from jdd.checkpoint import folder_of
    out = str(tmp_path / "run")
    os.makedirs(folder_of(out))
    with open(os.path.join(folder_of(out), "identity.json"), "w") as f:
        json.dump({}, f)
    assert resumable(_argv("dc"), out, 7) == ["distill", "--resume", out]
