"""Run folders (jdd.rundir): written as a whole, locked against a second writer, tied together by
a manifest, usual permissions; and the ``jdd`` command interrupted by SIGINT / SIGTERM at several
points (subprocesses, run concurrently to keep the suite short)."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from jdd.artifacts import load_distilled, write_json
from jdd.cli import main
from jdd.rundir import (MANIFEST, RunFolderError, RunWriter, acquire_lock, add_file, lock_path,
                        release_lock, sha256, signals_deferred)


def _leftovers(out):
    parent, base = os.path.split(os.path.abspath(out))
    return sorted(n for n in os.listdir(parent) if n.startswith(f".{base}."))


def _write_run(out, files, overwrite=False):
    with RunWriter(str(out), overwrite=overwrite) as w:
        for name, text in files.items():
            write_json(w.path(name), {"text": text, "run_id": w.run_id})
        m = w.commit(method="test")
    return m


def test_a_run_appears_whole_with_a_manifest_of_its_files(tmp_path):
    out = tmp_path / "a" / "run"  # parents are created
    m = _write_run(out, {"metrics.json": "one", "x.json": "two"})
    assert sorted(os.listdir(out)) == [MANIFEST, "metrics.json", "x.json"]
    on_disk = json.loads((out / MANIFEST).read_text())
    assert on_disk == json.loads(json.dumps(m)) and on_disk["method"] == "test"
    for name in ("metrics.json", "x.json"):
        assert on_disk["files"][name]["sha256"] == sha256(out / name)
        assert json.loads((out / name).read_text())["run_id"] == m["run_id"]
    assert _leftovers(out) == []


def test_an_existing_run_is_refused_then_replaced_whole_with_overwrite(tmp_path):
    out = tmp_path / "run"
    first = _write_run(out, {"metrics.json": "one", "stale.json": "old"})
    with pytest.raises(RunFolderError, match=f"already holds the jdd distill run "
                                             f"{first['run_id']}.*--overwrite"):
        _write_run(out, {"metrics.json": "two"})
    assert json.loads((out / "metrics.json").read_text())["text"] == "one"
    second = _write_run(out, {"metrics.json": "two"}, overwrite=True)
    assert sorted(os.listdir(out)) == [MANIFEST, "metrics.json"]  # the old run's files are gone
    assert json.loads((out / MANIFEST).read_text())["run_id"] == second["run_id"]
    assert _leftovers(out) == []
    # a folder of other files is refused too, naming them
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    with pytest.raises(RunFolderError, match=r"1 file\(s\) \(notes.txt\)"):
        _write_run(other, {"metrics.json": "x"})


def test_a_run_that_fails_midway_leaves_the_folder_as_it_was(tmp_path):
    out = tmp_path / "run"
    first = _write_run(out, {"metrics.json": "one"})
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    with pytest.raises(KeyboardInterrupt):
        with RunWriter(str(out), overwrite=True) as w:
            write_json(w.path("metrics.json"), {"text": "half"})
            raise KeyboardInterrupt
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert _leftovers(out) == [] and first["run_id"] in (out / MANIFEST).read_text()
    # and a new folder that fails is not created at all, nor the parents it needed
    new = tmp_path / "p" / "q" / "run"
    with pytest.raises(RuntimeError):
        with RunWriter(str(new)) as w:
            write_json(w.path("metrics.json"), {})
            raise RuntimeError("boom")
    assert not (tmp_path / "p").exists()


def test_a_live_lock_refuses_a_second_writer_and_a_dead_ones_is_taken_over(tmp_path):
    out = tmp_path / "run"
    token = acquire_lock(str(out), "jdd distill")
    with pytest.raises(RunFolderError, match=rf"being written by another run \(jdd distill, pid "
                                             rf"{os.getpid()}"):
        _write_run(out, {"metrics.json": "two"})
    release_lock(str(out), token)
    assert not os.path.exists(lock_path(str(out)))
    # a SIGKILLed writer: its lock names a dead pid, its staging folder is still there
    import socket
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock_path(str(out)), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "command": "jdd distill",
                   "since": "then", "token": "t"}, f)
    staging = tmp_path / ".run.staging-20260101T000000Z-deadbeef"
    staging.mkdir()
    (staging / "distilled.npz").write_bytes(b"half")
    _write_run(out, {"metrics.json": "three"})
    assert not staging.exists() and _leftovers(out) == []


def test_add_file_updates_the_manifest_only_while_the_set_is_the_same(tmp_path):
    out = tmp_path / "run"
    with RunWriter(str(out)) as w:
        with open(w.path("distilled.npz"), "wb") as f:
            f.write(b"set one")
        w.commit()
    sha = sha256(out / "distilled.npz")
    add_file(str(out), "eval-a.json", lambda p: write_json(p, {"a": 1}), expect_sha256=sha)
    m = json.loads((out / MANIFEST).read_text())
    assert m["files"]["eval-a.json"]["sha256"] == sha256(out / "eval-a.json")
    with pytest.raises(RunFolderError, match="replaced while this ran"):
        add_file(str(out), "eval-b.json", lambda p: write_json(p, {}), expect_sha256="0" * 64)
    assert not (out / "eval-b.json").exists() and _leftovers(out) == []


@pytest.mark.parametrize("mask", [0o022, 0o077])
def test_files_and_folders_respect_the_umask(tmp_path, mask):
    old = os.umask(mask)
    try:
        out = tmp_path / "run"
        _write_run(out, {"metrics.json": "one"})
        assert os.stat(out).st_mode & 0o777 == 0o777 & ~mask
        for name in os.listdir(out):
            assert os.stat(out / name).st_mode & 0o777 == 0o666 & ~mask, name
    finally:
        os.umask(old)


def test_signals_are_deferred_to_the_end_of_a_block():
    seen = []
    # a suite started in the background (cmd &, nohup) inherits SIGINT ignored
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with signals_deferred():
                os.kill(os.getpid(), signal.SIGINT)
                time.sleep(0.05)
                seen.append("block finished")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert seen == ["block finished"]


TINY = ["distill", "--method", "unrolled", "--ipc", "1", "--steps", "2", "--log-every", "1",
        "--inner-steps", "2", "--hidden", "8", "--n-models", "1", "--full-data-models", "1",
        "--full-data-epochs", "1", "--quiet"]


def test_distill_writes_one_run_id_everywhere_and_overwrite_clears_stale_files(tmp_path,
                                                                               capsys):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out), "--no-eval"]) == 0
    (out / "eval-old.json").write_text("{}")  # an unlisted file a user left there
    assert main([*TINY, "--out", str(out), "--seed", "1"]) == 2
    err = capsys.readouterr().err
    assert "already holds the jdd distill run" in err and "--overwrite" in err
    assert main([*TINY, "--out", str(out), "--seed", "1", "--overwrite", "--no-eval"]) == 0
    names = sorted(os.listdir(out))
    assert names == ["config.yaml", "distilled.npz", "distilled.png", "loss.png", MANIFEST,
                     "metrics.json"]
    m = json.loads((out / MANIFEST).read_text())
    assert json.loads((out / "metrics.json").read_text())["run_id"] == m["run_id"]
    assert load_distilled(out).meta["run_id"] == m["run_id"]
    assert m["files"]["distilled.npz"]["sha256"] == sha256(out / "distilled.npz")
    mask = os.umask(0)
    os.umask(mask)
    assert all(os.stat(out / n).st_mode & 0o777 == 0o666 & ~mask for n in names)  # not 0600

    # a set copied in from another run (here: the same arrays with other metadata) is refused
    from jdd.artifacts import save_distilled
    ds = load_distilled(out)
    save_distilled(out / "distilled.npz", ds.x, ds.y, ds.lr, ds.preprocessor,
                   dict(ds.meta, run_id="another run"))
    with pytest.raises(ValueError, match="not the file of run"):
        load_distilled(out)
    assert main(["evaluate", str(out), "--quiet"]) == 2
    assert f"not the file of run {m['run_id']}" in capsys.readouterr().err


def test_a_failed_write_leaves_the_previous_run(tmp_path, capsys, monkeypatch):
    out = tmp_path / "run"
    assert main([*TINY, "--out", str(out), "--no-eval"]) == 0
    before = {n: (out / n).read_bytes() for n in os.listdir(out)}
    import jdd.cli

    def disk_full(*a, **k):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr(jdd.cli, "_save_pictures", disk_full)
    assert main([*TINY, "--out", str(out), "--no-eval", "--overwrite"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {n: (out / n).read_bytes() for n in os.listdir(out)} == before
    assert _leftovers(out) == []


def test_evaluate_learned_lr_choices():
    from jdd.cli import EvaluateConfig, _use_learned_lr
    from jdd.config import ConfigError, validate
    got = {(ll, same): _use_learned_lr(EvaluateConfig(learned_lr=ll), same)
           for ll in ("auto", "yes", "no") for same in (True, False)}
    assert got == {("auto", True): True, ("auto", False): False, ("yes", True): True,
                   ("yes", False): True, ("no", True): False, ("no", False): False}
    assert not _use_learned_lr(EvaluateConfig(lr=0.1), True)
    with pytest.raises(ConfigError, match="--lr and --learned-lr yes"):
        validate(EvaluateConfig(lr=0.1, learned_lr="yes"))


# ------------------------------------------------------------------ signals, in subprocesses

#: Runs ``jdd`` with ``_save_pictures`` slowed down so a signal can land while the run's files
#: are half written into the staging folder (the "write" point).
_DRIVER = """
import signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
import jdd.cli as cli
real = cli._save_pictures
def slow(*a, **k):
    print("POINT write", file=sys.stderr, flush=True)
    time.sleep(120)
    return real(*a, **k)
cli._save_pictures = slow
real_preload = cli._preload
def preload():
    print("POINT start-up", file=sys.stderr, flush=True)
    real_preload()
cli._preload = preload
sys.argv = ["jdd"] + sys.argv[1:]
from jdd.console import main
main()
"""

#: Where each signal lands: the text on stderr that marks the point (start-up: as the command
#: starts importing JAX, with its handlers installed).
_POINTS = {"start-up": "POINT start-up", "distill": "unrolled ipc=1", "evaluate": "evaluate [1/",
           "write": "POINT write"}


_GC_DRIVER = """
import gc, os, signal
signal.signal(signal.SIGINT, signal.default_int_handler)  # even when started with SIGINT ignored
from jdd import console
console.install()
def callback(phase, info):        # like jaxlib's gc callback: Python can only report its errors
    if phase == "start" and not console._received:
        os.kill(os.getpid(), signal.SIGINT)
        for _ in range(100000):   # the handler runs here, inside the callback
            pass
gc.callbacks.append(callback)
gc.collect()
gc.callbacks.remove(callback)
print("went on", flush=True)
try:
    console.raise_if_interrupted()
except KeyboardInterrupt:
    print("raised again at the safe point", flush=True)

class Broken:                     # an unrelated ignored error is still reported
    def __del__(self):
        raise ValueError("not an interrupt")
Broken()
"""


def test_an_interrupt_inside_a_gc_callback_is_kept_quiet_and_raised_at_the_next_safe_point():
    r = subprocess.run([sys.executable, "-c", _GC_DRIVER], capture_output=True, text=True,
                       timeout=120)
    assert r.stdout.splitlines() == ["went on", "raised again at the safe point"]
    assert "KeyboardInterrupt" not in r.stderr
    assert "ValueError: not an interrupt" in r.stderr


def test_sigint_and_sigterm_at_any_point_exit_cleanly_and_leave_the_folder(tmp_path):
    argv = ["distill", "--method", "unrolled", "--ipc", "1", "--steps", "400", "--log-every",
            "50", "--inner-steps", "5", "--hidden", "8", "--full-data-models", "1",
            "--full-data-epochs", "1", "--overwrite"]
    # only the "evaluate" point needs an evaluation long enough to land in
    per_point = {"start-up": ["--no-eval"], "distill": ["--no-eval"],
                 "evaluate": ["--n-models", "300"], "write": ["--no-eval"]}
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    procs = {}
    for sig in ("SIGINT", "SIGTERM"):
        for point in _POINTS:
            out = tmp_path / f"{sig}-{point}"
            out.mkdir()
            (out / "old-run.txt").write_text("the previous run")
            err = open(tmp_path / f"{sig}-{point}.err", "w+")
            p = subprocess.Popen([sys.executable, "-c", _DRIVER, *argv, *per_point[point],
                                  "--out", str(out)],
                                 stdout=subprocess.DEVNULL, stderr=err, env=env)
            procs[sig, point] = (p, err, out)
    deadline = time.monotonic() + 240
    sent = set()
    while len(sent) < len(procs) and time.monotonic() < deadline:
        for (sig, point), (p, err, out) in procs.items():
            if (sig, point) in sent:
                continue
            err.seek(0)
            if _POINTS[point] in err.read():
                time.sleep(0.5)
                p.send_signal(getattr(signal, sig))
                sent.add((sig, point))
            assert p.poll() is None, f"{sig} {point}: exited before the signal"
        time.sleep(0.1)
    assert len(sent) == len(procs), f"points never reached: {set(procs) - sent}"
    for (sig, point), (p, err, out) in procs.items():
        rc = p.wait(timeout=120)
        err.seek(0)
        text = err.read()
        assert rc == (130 if sig == "SIGINT" else 143), (sig, point, rc, text[-2000:])
        assert "Traceback" not in text and f"interrupted ({sig})" in text, text[-2000:]
        assert sorted(os.listdir(out)) == ["old-run.txt"], (sig, point)
        assert _leftovers(out) == [], (sig, point)


def test_two_concurrent_runs_to_one_folder_never_mix(tmp_path):
    out = tmp_path / "run"
    argv = [sys.executable, "-m", "jdd", *TINY, "--steps", "30", "--out", str(out)]
    first = subprocess.Popen(argv, stderr=subprocess.PIPE, text=True)
    t0 = time.monotonic()
    while not os.path.exists(lock_path(str(out))) and time.monotonic() - t0 < 60:
        time.sleep(0.05)
    second = subprocess.run(argv, stderr=subprocess.PIPE, text=True, timeout=120)
    assert second.returncode == 2 and "being written by another run" in second.stderr
    assert second.stderr.count("\n") == 1, second.stderr
    assert first.wait(timeout=300) == 0, first.stderr.read()
    m = json.loads((out / MANIFEST).read_text())
    for name, entry in m["files"].items():
        assert sha256(out / name) == entry["sha256"]
    assert np.asarray(load_distilled(out).x).shape == (1, 10, 8, 8, 1)


def test_without_an_atomic_swap_a_commit_killed_between_renames_is_repaired(tmp_path,
                                                                            monkeypatch):
    import socket
    import jdd.rundir as rundir
    out = tmp_path / "run"
    first = _write_run(out, {"metrics.json": "one"})
    monkeypatch.setattr(rundir, "_exchange", lambda a, b: False)
    second = _write_run(out, {"metrics.json": "two"}, overwrite=True)  # the two-rename path
    assert json.loads((out / MANIFEST).read_text())["run_id"] == second["run_id"]
    assert _leftovers(out) == []
    # a writer SIGKILLed between the renames: the run is aside, the lock names a dead pid
    os.rename(out, tmp_path / f".run.old-{first['run_id']}")
    (tmp_path / ".run.staging-x").mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    with open(lock_path(str(out)), "w") as f:
        json.dump({"pid": dead.pid, "host": socket.gethostname(), "token": "t"}, f)
    with pytest.raises(RunFolderError, match=f"already holds the jdd distill run "
                                             f"{second['run_id']}"):
        _write_run(out, {"metrics.json": "three"})  # taken over: the run is put back first
    assert _leftovers(out) == [] and (out / "metrics.json").exists()
