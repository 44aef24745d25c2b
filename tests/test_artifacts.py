"""Artifacts: round trips, atomic writes, clear errors on corrupt files."""

import json
import os

import numpy as np
import pytest

from jdd.artifacts import (atomic_write, load_distilled, save_curve, save_distilled,
                           save_image_grid, write_json)
from jdd.data import fit_preprocessor


def _pre():
    x = np.random.default_rng(0).normal(size=(50, 4, 4, 1)).astype(np.float32)
    return fit_preprocessor(x, "zca", zca_reg=0.1), x


def test_distilled_round_trip(tmp_path):
    pre, x = _pre()
    xs = np.random.default_rng(1).normal(size=(2, 6, 4, 4, 1)).astype(np.float32)
    ys = np.random.default_rng(2).random((2, 6, 3)).astype(np.float32)
    lr = np.array([0.1, np.nan], np.float32)
    save_distilled(tmp_path / "d.npz", xs, ys, lr, pre, {"method": "unrolled", "ipc": 2})
    ds = load_distilled(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.x, xs)
    np.testing.assert_array_equal(ds.y, ys)
    np.testing.assert_array_equal(ds.lr, lr)
    assert ds.meta == {"method": "unrolled", "ipc": 2}
    np.testing.assert_allclose(ds.preprocessor.apply(x), pre.apply(x), rtol=1e-6)
    os.rename(tmp_path / "d.npz", tmp_path / "distilled.npz")
    assert load_distilled(tmp_path).meta["ipc"] == 2  # a run folder works too


def test_atomic_write_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "out.json"
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("{partial")
            raise RuntimeError("killed")
    assert os.listdir(tmp_path) == []
    write_json(path, {"a": np.float32(1.5), "b": np.arange(3)})
    assert json.loads(path.read_text()) == {"a": 1.5, "b": [0, 1, 2]}
    # a failed overwrite keeps the old complete file
    with pytest.raises(RuntimeError):
        with atomic_write(path, "w") as f:
            f.write("garbage")
            raise RuntimeError("killed")
    assert json.loads(path.read_text())["a"] == 1.5
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_load_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="distilled.npz"):
        load_distilled(tmp_path)
    (tmp_path / "bad.npz").write_bytes(b"not a zip at all")
    with pytest.raises(ValueError, match="corrupt|not a jdd"):
        load_distilled(tmp_path / "bad.npz")
    np.savez(tmp_path / "other.npz", a=np.zeros(3))
    with pytest.raises(ValueError, match="missing keys"):
        load_distilled(tmp_path / "other.npz")
    pre, _ = _pre()
    with pytest.raises(ValueError, match="expected x"):
        save_distilled(tmp_path / "d.npz", np.zeros((2, 3)), np.zeros((2, 3, 1)), [1, 1], pre, {})
    assert not (tmp_path / "d.npz").exists()


def test_pictures_are_pngs(tmp_path):
    imgs = np.random.default_rng(0).random((20, 8, 8, 1))
    save_image_grid(tmp_path / "g.png", imgs, np.repeat(np.arange(10), 2), title="t")
    save_image_grid(tmp_path / "v.png", imgs.reshape(20, -1))
    save_curve(tmp_path / "c.png", np.arange(5), np.random.default_rng(0).random((2, 5)) + 0.1)
    for f in ("g.png", "v.png", "c.png"):
        assert (tmp_path / f).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
