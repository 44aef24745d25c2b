"""Checkpoint and resume (jdd.checkpoint): an interrupted run resumed ends byte-identical to an
uninterrupted one (in Python, through the CLI, and with a real SIGTERM in the middle of a chunk),
NaN/inf stops a run naming the step and keeps the last good checkpoint, and checkpoints of
another run, other options or other data are refused."""

import json
import os
import signal
import subprocess
import sys
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.artifacts import load_distilled
from jdd.checkpoint import RunCheckpoints, data_fingerprint, folder_of
from jdd.cli import main
from jdd.data import load_digits
from jdd.distill import Distiller, Synthetic, distill

RUN = ["distill", "--method", "unrolled", "--ipc", "1", "--steps", "12", "--log-every", "2",
       "--inner-steps", "3", "--hidden", "16", "--no-eval", "--quiet"]


def _interrupt_after(monkeypatch, chunks):
    """Make the run loop's safe point raise KeyboardInterrupt after ``chunks`` chunks."""
    import jdd.console
    calls = []

    def fake():
        calls.append(1)
        if len(calls) == chunks:
            raise KeyboardInterrupt()
    monkeypatch.setattr(jdd.console, "raise_if_interrupted", fake)


def test_python_resume_is_byte_identical_across_seeds(tmp_path, monkeypatch):
    from jdd.distill import kip
    from jdd.kernels import fc_kernel
    train, _ = load_digits()
    d = kip(fc_kernel(depth=1), ipc=1, batch_size=64)          # Adam state, random batches
    keys = jax.random.split(jax.random.key(0), 2)
    whole = distill(d, keys, train, 14, log_every=3, progress=False)
    ck = RunCheckpoints(str(tmp_path / "x.ckpt"), every=6)
    ck.start({"options": {}}, "")
    _interrupt_after(monkeypatch, 3)                 # 9 steps done: checkpoints 6 and 9
    with pytest.raises(KeyboardInterrupt):
        distill(d, keys, train, 14, log_every=3, progress=False, checkpoints=ck)
    assert sorted(ck._manager().all_steps()) == [6, 9]
    monkeypatch.undo()
    init_keys = jax.vmap(lambda k: jax.random.split(k)[0])(keys)
    template = jax.eval_shape(jax.vmap(d.init, in_axes=(0, None)), init_keys, train)
    state, hist, logged = RunCheckpoints(str(tmp_path / "x.ckpt"), 6).restore(template)
    assert logged == [3, 6, 9] and np.asarray(state.step).tolist() == [9, 9]
    rest = distill(d, keys, train, 5, log_every=3, progress=False, state=state,
                   prior=(hist, logged))
    for a, b in zip(jax.tree.leaves(whole.synthetic), jax.tree.leaves(rest.synthetic)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    np.testing.assert_array_equal(rest.history["loss"], whole.history["loss"])
    np.testing.assert_array_equal(rest.steps_logged, whole.steps_logged)


class _S(NamedTuple):
    x: jax.Array
    step: jax.Array


def _diverging(loss_nan_at=None, state_nan_at=None):
    """A toy distiller whose loss (or state) turns NaN at a given step."""
    def init(key, data):
        return _S(jnp.ones(3), jnp.zeros((), jnp.int32))

    def step(s, key, data):
        n = s.step + 1
        x = s.x * 1.01
        if state_nan_at is not None:
            x = jnp.where(n >= state_nan_at, jnp.nan, x)
        loss = jnp.float32(1.0)
        if loss_nan_at is not None:
            loss = jnp.where(n >= loss_nan_at, jnp.inf, loss)
        return _S(x, n), {"loss": loss}

    return Distiller(init, step, lambda s: Synthetic(x=s.x, y=s.x))


@pytest.mark.parametrize("kind, msg", [
    ("loss", "the outer loss became NaN/inf at step 7; lower the outer learning rate"),
    ("state", "the synthetic set (or the method's state) became NaN/inf during steps 6..10"),
])
def test_nan_stops_the_run_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, kind,
                                                                               msg):
    d = _diverging(loss_nan_at=7) if kind == "loss" else _diverging(state_nan_at=8)
    ck = RunCheckpoints(str(tmp_path / "c.ckpt"), every=5)
    ck.start({"options": {}}, "")
    with pytest.raises(FloatingPointError) as e:
        distill(d, jax.random.key(0), None, 20, log_every=5, progress=False, checkpoints=ck)
    assert msg in str(e.value) and "label" in str(e.value)
    assert ck.latest_step() == 5
    state, _, _ = ck.restore(d.init(None, None))
    assert np.all(np.isfinite(np.asarray(state.x))) and int(state.step) == 5


def test_cli_resume_after_an_interrupt_matches_an_uninterrupted_run(tmp_path, monkeypatch,
                                                                    capsys):
    assert main(RUN + ["--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "cut"
    _interrupt_after(monkeypatch, 4)                 # after step 8; checkpoints every 3
    assert main(RUN + ["--out", str(out), "--checkpoint-every", "3"]) == 130
    monkeypatch.undo()
    assert not out.exists() and os.path.isdir(folder_of(str(out)))
    ident = json.load(open(os.path.join(folder_of(str(out)), "identity.json")))
    assert ident["options"]["method"] == "unrolled" and len(ident["data_sha256"]) == 64
    # the same out without --resume is refused, naming --resume
    assert main(RUN + ["--out", str(out), "--checkpoint-every", "3"]) == 2
    assert "--resume" in capsys.readouterr().err
    # other flags beside --resume are refused
    assert main(["distill", "--resume", str(out), "--lr", "0.5"]) == 2
    assert "expected no other options" in capsys.readouterr().err
    assert main(["distill", "--resume", str(out), "--quiet"]) == 0
    assert not os.path.exists(folder_of(str(out)))          # removed once the run is written
    a, b = load_distilled(tmp_path / "whole"), load_distilled(out)
    for f in ("x", "y", "lr"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))
    ma = json.load(open(tmp_path / "whole" / "metrics.json"))
    mb = json.load(open(out / "metrics.json"))
    assert mb["resumed_from_step"] == 8
    assert mb["history"] == ma["history"]


def test_checkpoints_of_other_options_or_data_are_refused(tmp_path, monkeypatch, capsys):
    rng = np.random.default_rng(0)
    path = tmp_path / "data.npz"
    x = rng.random((60, 4, 4, 1)).astype(np.float32)
    y = np.repeat(np.arange(3), 20)
    np.savez(path, x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    run = ["distill", "--method", "unrolled", "--dataset", "npz", "--data-dir", str(path),
           "--ipc", "1", "--steps", "8", "--log-every", "2", "--inner-steps", "2", "--hidden",
           "8", "--no-eval", "--quiet", "--checkpoint-every", "2"]
    out = tmp_path / "r"
    _interrupt_after(monkeypatch, 2)
    assert main(run + ["--out", str(out)]) == 130
    monkeypatch.undo()
    ck = folder_of(str(out))
    # other options: the saved config no longer matches the identity (a hand-edited file)
    cfg = os.path.join(ck, "config.yaml")
    original = open(cfg).read()
    open(cfg, "w").write(original.replace("inner_lr: 0.01", "inner_lr: 0.02"))
    assert main(["distill", "--resume", str(out)]) == 2
    err = capsys.readouterr().err
    assert "holds checkpoints of a different run" in err and "inner_lr" in err
    open(cfg, "w").write(original)
    # other data
    np.savez(path, x_train=x[::-1].copy(), y_train=y, x_test=x[:9], y_test=y[:9])
    assert main(["distill", "--resume", str(out)]) == 2
    assert "made on other training data" in capsys.readouterr().err
    np.savez(path, x_train=x, y_train=y, x_test=x[:9], y_test=y[:9])
    assert main(["distill", "--resume", str(out)]) == 0
    # --overwrite discards old checkpoints; a non-iterative method has nothing to checkpoint
    assert main(["distill", "--resume", str(tmp_path / "none")]) == 2
    assert "no checkpoints at" in capsys.readouterr().err
    assert main(["distill", "--method", "krr-closed-form", "--checkpoint-every", "5", "--out",
                 str(tmp_path / "cf"), "--quiet"]) == 2
    assert "not iterative" in capsys.readouterr().err


def test_data_fingerprint_changes_with_any_byte():
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    y = np.arange(3)
    f = data_fingerprint(a, y)
    assert f == data_fingerprint(a.copy(), y.copy())
    b = a.copy()
    b[1, 2] = np.nextafter(b[1, 2], 100)
    assert f != data_fingerprint(b, y) != data_fingerprint(a.reshape(4, 3), y)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_sigterm_in_the_middle_of_a_chunk_checkpoints_and_resumes_to_the_same_bytes(tmp_path):
    run = ["distill", "--method", "unrolled", "--ipc", "1", "--steps", "60", "--log-every", "10",
           "--inner-steps", "150", "--hidden", "64", "--no-eval", "--quiet",
           "--checkpoint-every", "10"]
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)),
           "JAX_PLATFORMS": "cpu"}
    out = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "jdd"] + run + ["--out", str(out)],
                            env=env, stderr=subprocess.PIPE, text=True)
    steps = os.path.join(folder_of(str(out)), "steps")
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:
        if os.path.isdir(steps) and [n for n in os.listdir(steps) if n.isdigit() and n != "0"]:
            break
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read()
    proc.send_signal(signal.SIGTERM)                 # a chunk is running: it finishes first
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 143, err
    assert "checkpoint of step" in err and not out.exists()
    cut = RunCheckpoints(folder_of(str(out)), None).latest_step()
    assert cut is not None and 10 <= cut < 60
    assert main(["distill", "--resume", str(out), "--quiet"]) == 0
    assert main(run + ["--out", str(tmp_path / "whole")]) == 0
    a, b = load_distilled(tmp_path / "whole"), load_distilled(out)
    for f in ("x", "y", "lr"):
        np.testing.assert_array_equal(getattr(a, f), getattr(b, f))


def test_resume_keeps_options_whose_value_is_none_but_whose_default_is_not(tmp_path,
                                                                          monkeypatch):
    """KIP with ``--batch-size none`` (the whole training set each step; the default is 256)
    and no cap on its full-data baseline: the checkpoint's config.yaml holds ``null`` for both,
    and resuming reads them back as none, not as the defaults."""
    run = ["distill", "--method", "kip", "--ipc", "1", "--steps", "6", "--log-every", "1",
           "--batch-size", "none", "--full-data-max", "none", "--no-eval", "--quiet"]
    assert main(run + ["--out", str(tmp_path / "whole")]) == 0
    out = tmp_path / "cut"
    _interrupt_after(monkeypatch, 3)
    assert main(run + ["--out", str(out), "--checkpoint-every", "2"]) == 130
    monkeypatch.undo()
    assert main(["distill", "--resume", str(out), "--quiet"]) == 0
    import yaml
    a, b = load_distilled(tmp_path / "whole"), load_distilled(out)
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert resolved["batch_size"] is None and resolved["full_data_max"] is None
    np.testing.assert_array_equal(a.x, b.x)
    np.testing.assert_array_equal(a.y, b.y)
    assert json.load(open(out / "metrics.json"))["resumed_from_step"] == 3
