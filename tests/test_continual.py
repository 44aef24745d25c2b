"""jdd continual (class-incremental learning with distilled memories): task splits, herding,
equal storage per class across memories, and a tiny run end to end through the CLI."""

import json

import jax
import numpy as np
import pytest

from jdd.cli import main
from jdd.continual import herding, subset, task_split
from jdd.data import Dataset


def test_task_split_fixed_random_and_refused():
    assert task_split(10, 5) == [[0, 1], [2, 3], [4, 5], [6, 7], [8, 9]]
    a = task_split(10, 5, jax.random.key(3))
    assert sorted(c for t in a for c in t) == list(range(10)) and a != task_split(10, 5)
    assert a == task_split(10, 5, jax.random.key(3))
    with pytest.raises(ValueError, match="the 10 classes do not split evenly"):
        task_split(10, 3)


def test_subset_keeps_the_classes_and_relabels_them_in_task_order():
    x = np.arange(12, dtype=np.float32).reshape(6, 2)
    ds = Dataset.from_arrays(x, np.array([0, 1, 2, 3, 2, 3]), 4, "t")
    s = subset(ds, [3, 2], relabel=True)
    np.testing.assert_array_equal(np.asarray(s.y), [1, 0, 1, 0])     # 3 -> 0, 2 -> 1 ... in order
    np.testing.assert_array_equal(np.asarray(s.x), x[[2, 3, 4, 5]])
    assert s.num_classes == 2
    s = subset(ds, [3, 2], relabel=False)
    np.testing.assert_array_equal(np.asarray(s.y), [2, 3, 2, 3])
    assert s.num_classes == 4


def test_herding_tracks_the_mean_better_than_random_picks():
    rng = np.random.default_rng(0)
    f = rng.normal(size=(200, 5)) + rng.normal(size=5)
    idx = herding(f, 10)
    assert len(set(idx.tolist())) == 10
    # the first pick is the row nearest the mean; the greedy step is written out for the second
    mu = f.mean(0)
    assert idx[0] == np.argmin(np.sum((f - mu) ** 2, 1))
    cand = np.sum(((f[idx[0]] + f) / 2 - mu) ** 2, 1)
    cand[idx[0]] = np.inf
    assert idx[1] == np.argmin(cand)
    err = np.linalg.norm(f[idx].mean(0) - mu)
    rand = [np.linalg.norm(f[rng.choice(200, 10, replace=False)].mean(0) - mu)
            for _ in range(200)]
    assert err < np.min(rand)
    assert sorted(herding(f[:7], 7).tolist()) == list(range(7))


def test_continual_run_end_to_end(tmp_path, capsys):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(4), 12)
    x = rng.normal(size=(48, 8, 8, 1)).astype(np.float32) + y[:, None, None, None]
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[::2], y_test=y[::2])
    out = tmp_path / "cl"
    assert main(["continual", "--dataset", "npz", "--data-dir", str(path), "--tasks", "2",
                 "--ipc", "2", "--rank", "2", "--width", "8", "--eval-epochs", "3",
                 "--dm-steps", "2", "--dc-iterations", "1", "--seeds", "2", "--n-models", "1",
                 "--memories", "random,herding,dm-low-rank,dc",   # dm: the same code as low-rank
                 "--class-order", "random", "--out", str(out), "--quiet"]) == 0
    r = json.loads((out / "continual.json").read_text())
    assert (out / "continual.png").stat().st_size > 0
    assert len(r["tasks"]) == 2 and all(len(s) == 2 for s in r["tasks"])
    assert set(r["memories"]) == {"random", "herding", "dm-low-rank", "dc"}
    for kind, m in r["memories"].items():
        a = np.asarray(m["accuracy"])
        assert a.shape == (2, 2) and np.all((a >= 0) & (a <= 1))
        np.testing.assert_allclose(m["mean"], a.mean())
        # equal storage: 2 images of 8x8x1 per class, whatever the memory
        assert m["storage_per_class"]["inputs_floats"] == 2 * 64
    # 8x8 at rank 2 and a budget of 2: floor(2 * 64 / 32) = 4 images per class
    assert r["memories"]["dm-low-rank"]["storage_per_class"]["images"] == 4
    assert r["memories"]["dc"]["storage_per_class"]["images"] == 2


@pytest.mark.parametrize("ipc, given, expected", [
    (1, None, 0.1), (5, None, 0.1),        # DC's loops: one update per fresh network
    (6, None, 0.003), (10, None, 0.003),   # several updates, the network trained between
    (10, 0.2, 0.2), (1, 0.003, 0.003)])
def test_the_dc_memory_gets_its_learning_rate_by_budget(ipc, given, expected, monkeypatch):
    import jdd.distill.dc
    from jdd.continual import ContinualConfig, memory_builder
    from jdd.distill.dc import default_loops
    seen = {}

    def spy(model, **kw):
        seen.update(kw)
        return None
    monkeypatch.setattr(jdd.distill.dc, "dc", spy)
    memory_builder("dc", ContinualConfig(ipc=ipc, dc_lr=given, width=4, out="o"), 2)
    assert seen["lr"] == expected and seen["init"] == "real" and seen["ipc"] == ipc
    assert (default_loops(ipc)[0] == 1) == (ipc <= 5)


@pytest.mark.parametrize("argv, msg", [
    (["--tasks", "3"], "the 10 classes do not split evenly"),
    (["--memories", "random,gold"], "--memories: expected names from"),
    (["--ipc", "1", "--rank", "5"], "expected a rank <= 4"),
    (["--eval-epochs", "0"], "--eval-epochs: expected"),
    (["--dc-lr", "0"], "--dc-lr: expected"),
    (["--dc-lr", "nan"], "--dc-lr: expected"),
])
def test_bad_continual_options_are_refused_before_loading(argv, msg, tmp_path, capsys,
                                                          monkeypatch):
    import jdd.cli as cli
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data were loaded"))
    assert main(["continual", *argv, "--out", str(tmp_path / "o")]) == 2
    assert msg in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def _toy(tmp_path):
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(4), 10)
    x = rng.normal(size=(40, 8, 8, 1)).astype(np.float32) + y[:, None, None, None]
    path = tmp_path / "toy.npz"
    np.savez(path, x_train=x, y_train=y, x_test=x[::2], y_test=y[::2])
    return ["continual", "--dataset", "npz", "--data-dir", str(path), "--tasks", "2",
            "--ipc", "1", "--width", "8", "--eval-epochs", "2", "--dm-steps", "2",
            "--seeds", "2", "--n-models", "1", "--memories", "random,dm", "--quiet"]


def test_an_interrupted_continual_run_resumes_to_the_same_result(tmp_path, monkeypatch, capsys):
    import jdd.evaluate
    from jdd.checkpoint import folder_of
    argv = _toy(tmp_path)
    whole = tmp_path / "whole"
    assert main(argv + ["--out", str(whole)]) == 0
    assert not (tmp_path / "whole.ckpt").exists()           # removed when the run ends
    ref = json.loads((whole / "continual.json").read_text())
    assert ref["restored"] == 0

    # die in the 6th evaluation (seed 1, random, task 2): 5 tasks of 8 are finished and saved
    real, calls = jdd.evaluate.evaluate_set, []

    def dying(*a, **k):
        calls.append(1)
        if len(calls) == 6:
            raise KeyboardInterrupt
        return real(*a, **k)
    monkeypatch.setattr(jdd.evaluate, "evaluate_set", dying)
    out = tmp_path / "cut"
    ck = folder_of(str(out))
    assert main(argv + ["--out", str(out)]) == 130
    assert (f"interrupted (SIGINT); the output folder is as it was before; the tasks finished so "
            f"far are saved in {ck}: continue with `jdd continual --resume {out}`"
            in capsys.readouterr().err)
    monkeypatch.setattr(jdd.evaluate, "evaluate_set", real)
    assert not out.exists()
    assert sorted(p.name for p in (tmp_path / "cut.ckpt" / "tasks").iterdir()) == [
        "seed0-dm.npz", "seed0-random.npz", "seed1-random.npz"]
    capsys.readouterr()

    # the same command again is refused: resume or discard
    assert main(argv + ["--out", str(out)]) == 2
    assert f"continue it with `jdd continual --resume {out}`" in capsys.readouterr().err
    # --resume takes its options from the saved progress only
    assert main(["continual", "--resume", str(out), "--seeds", "3"]) == 2
    assert "expected only --quiet beside it; got --seeds" in capsys.readouterr().err

    assert main(["continual", "--resume", str(out), "--quiet"]) == 0
    got = json.loads((out / "continual.json").read_text())
    assert got["restored"] == 5 and got["config"]["seeds"] == 2
    for kind in ("random", "dm"):
        assert got["memories"][kind]["accuracy"] == ref["memories"][kind]["accuracy"]
        assert got["memories"][kind]["storage_per_class"] == \
            ref["memories"][kind]["storage_per_class"]
    assert got["tasks"] == ref["tasks"]
    assert not (tmp_path / "cut.ckpt").exists()
    assert main(["continual", "--resume", str(out)]) == 2
    assert f"no saved progress at {ck}" in capsys.readouterr().err


def test_saved_continual_progress_is_checked(tmp_path, monkeypatch, capsys):
    import jdd.evaluate
    argv = _toy(tmp_path)
    out = tmp_path / "cut"

    def dying(*a, **k):
        raise KeyboardInterrupt
    real = jdd.evaluate.evaluate_set
    monkeypatch.setattr(jdd.evaluate, "evaluate_set", dying)
    assert main(argv + ["--out", str(out)]) == 130
    monkeypatch.setattr(jdd.evaluate, "evaluate_set", real)
    ident = tmp_path / "cut.ckpt" / "identity.json"
    saved = json.loads(ident.read_text())
    assert saved["options"]["dm_steps"] == 2 and "out" not in saved["options"]

    # other training data: refused, nothing written
    ident.write_text(json.dumps({**saved, "data_sha256": "0" * 64}))
    assert main(["continual", "--resume", str(out)]) == 2
    assert "the checkpoints were made on other training data" in capsys.readouterr().err
    assert not out.exists()
    # a damaged task file: refused with its name
    ident.write_text(json.dumps(saved))
    (tmp_path / "cut.ckpt" / "tasks").mkdir(exist_ok=True)
    damaged = tmp_path / "cut.ckpt" / "tasks" / "seed0-random.npz"
    np.savez(damaged, x=np.zeros((2, 8, 8, 1)))
    for data in (b"not a zip", damaged.read_bytes()[:-30], damaged.read_bytes()):  # or no keys
        damaged.write_bytes(data)
        assert main(["continual", "--resume", str(out)]) == 2
        assert "seed0-random.npz: the saved progress could not be read" in \
            capsys.readouterr().err
    # --overwrite discards the progress and runs from the start
    assert main(argv + ["--out", str(out), "--overwrite", "--seeds", "1"]) == 0
    assert json.loads((out / "continual.json").read_text())["restored"] == 0
    assert not (tmp_path / "cut.ckpt").exists()
