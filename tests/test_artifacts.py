"""Artifacts: round trips, atomic writes, clear errors on corrupt files."""

import json
import os

import numpy as np
import pytest

from jdd.artifacts import (DistilledSet, atomic_write, load_distilled, save_curve,
                           save_distilled, save_image_grid, validate_distilled, write_json)
from jdd.data import fit_preprocessor


def _pre():
    x = np.random.default_rng(0).normal(size=(50, 4, 4, 1)).astype(np.float32)
    return fit_preprocessor(x, "zca", zca_reg=0.1), x


def test_distilled_round_trip(tmp_path):
    pre, x = _pre()
    xs = np.random.default_rng(1).normal(size=(2, 6, 4, 4, 1)).astype(np.float32)
    ys = np.random.default_rng(2).random((2, 6, 3)).astype(np.float32)
    lr = np.array([0.1, np.nan], np.float32)
    meta = {"method": "unrolled", "dataset": "digits", "ipc": 2}
    save_distilled(tmp_path / "d.npz", xs, ys, lr, pre, meta)
    ds = load_distilled(tmp_path / "d.npz")
    np.testing.assert_array_equal(ds.x, xs)
    np.testing.assert_array_equal(ds.y, ys)
    np.testing.assert_array_equal(ds.lr, lr)
    assert ds.meta == meta
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


# ---------------------------------------------------------------- inconsistent saved sets

_META = {"method": "unrolled", "dataset": "digits", "ipc": 3, "num_classes": 3}


def _write_raw(path, **over):
    """A distilled.npz written directly (bypassing save_distilled's checks), with overrides."""
    pre, _ = _pre()
    rng = np.random.default_rng(0)
    arrays = {"x": rng.normal(size=(2, 9, 4, 4, 1)).astype(np.float32),
              "y": rng.random((2, 9, 3)).astype(np.float32),
              "lr": np.array([0.05, np.nan], np.float32),
              **pre.to_arrays(), "meta": np.asarray(json.dumps(_META))}
    arrays.update(over)
    arrays = {k: v for k, v in arrays.items() if v is not None}
    np.savez(path, **arrays)
    return path


def _meta(**over):
    m = {**_META, **over}
    return np.asarray(json.dumps({k: v for k, v in m.items() if v is not None}))


def _x_with(value, at=(0, 1, 2, 3, 0)):
    x = np.zeros((2, 9, 4, 4, 1), np.float32)
    x[at] = value
    return x


_BAD_SETS = {
    # case: (overrides, pieces the message must contain)
    "y rows": (dict(y=np.zeros((2, 8, 3), np.float32)), ["y has shape (2, 8, 3)", "(2, 9, k)"]),
    "y seeds": (dict(y=np.zeros((1, 9, 3), np.float32)), ["y has shape (1, 9, 3)", "(2, 9, k)"]),
    "y 2-d": (dict(y=np.zeros((2, 9), np.float32)), ["y must be", "(seeds, m, k)", "(2, 9)"]),
    "y classes": (dict(y=np.zeros((2, 9, 4), np.float32)),
                  ["4 classes", "meta['num_classes'] is 3"]),
    "lr empty": (dict(lr=np.zeros((0,), np.float32)), ["lr is empty", "(2,)", "per seed"]),
    "lr length": (dict(lr=np.full((3,), 0.1, np.float32)),
                  ["lr has", "(3,)", "expected shape (2,)"]),
    "lr 0-d": (dict(lr=np.float32(0.1)), ["lr has", "expected shape (2,)"]),
    "lr inf": (dict(lr=np.array([np.inf, np.nan], np.float32)),
               ["lr", "inf", "seeds [0]", ">= 0"]),
    "lr negative": (dict(lr=np.array([0.1, -0.5], np.float32)), ["lr", "-0.5", "seeds [1]"]),
    "x NaN": (dict(x=_x_with(np.nan)), ["x contains 1 NaN/inf"]),
    "x inf": (dict(x=_x_with(-np.inf)), ["x contains 1 NaN/inf"]),
    "y NaN": (dict(y=np.where(np.arange(3) == 1, np.nan, 0.0)[None, None].repeat(9, 1)
                   .repeat(2, 0).astype(np.float32)), ["y contains 18 NaN/inf"]),
    "y inf": (dict(y=np.full((2, 9, 3), np.inf, np.float32)), ["y contains 54 NaN/inf"]),
    "x 2-d": (dict(x=np.zeros((2, 9), np.float32), y=np.zeros((2, 9, 3), np.float32)),
              ["x must be", "at least 3 dims", "(2, 9)"]),
    "x strings": (dict(x=np.full((2, 9, 1), "a")), ["x must be real numbers"]),
    "meta not JSON": (dict(meta=np.asarray("{method: unrolled")), ["meta is not valid JSON"]),
    "meta a list": (dict(meta=np.asarray("[1, 2]")), ["meta must be a JSON object", "list"]),
    "meta an array": (dict(meta=np.zeros(3)), ["meta must be a 0-d string", "(3,)"]),
    "meta no dataset": (dict(meta=_meta(dataset=None)), ["meta lacks 'dataset'"]),
    "meta no method": (dict(meta=_meta(method=None)), ["meta lacks 'method'"]),
    "meta no ipc": (dict(meta=_meta(ipc=None)), ["meta lacks 'ipc'"]),
    "meta lacks all": (dict(meta=np.asarray("{}")), ["'dataset', 'method', 'ipc'"]),
    "meta bad ipc": (dict(meta=_meta(ipc=0)), ["meta['ipc'] must be a positive integer"]),
    "pre_zca shape": (dict(pre_zca=np.eye(5, dtype=np.float32)),
                      ["pre_zca", "(5, 5)", "(16, 16)"]),
    "pre_mean NaN": (dict(pre_mean=np.full((4, 4, 1), np.nan, np.float32)),
                     ["pre_mean", "NaN/inf"]),
    "pre_kind unknown": (dict(pre_kind=np.asarray("pca")), ["'pca'"]),
}


@pytest.mark.parametrize("case", sorted(_BAD_SETS))
def test_load_inconsistent_set_one_clear_error(tmp_path, case):
    over, pieces = _BAD_SETS[case]
    path = _write_raw(tmp_path / "distilled.npz", **over)
    with pytest.raises(ValueError) as e:
        load_distilled(tmp_path)  # the run folder: the message names the file itself
    for piece in pieces + [str(path)]:
        assert piece in str(e.value), (piece, str(e.value))


def test_nan_lr_means_no_learned_rate_and_is_legal(tmp_path):
    _write_raw(tmp_path / "d.npz", lr=np.array([np.nan, np.nan], np.float32))
    ds = load_distilled(tmp_path / "d.npz")
    assert np.isnan(ds.lr).all() and ds.meta == _META
    _write_raw(tmp_path / "d.npz", meta=_meta(num_classes=None))  # num_classes is optional
    assert load_distilled(tmp_path / "d.npz").y.shape == (2, 9, 3)


def test_validate_distilled_directly(tmp_path):
    pre, _ = _pre()
    good = DistilledSet(np.zeros((1, 2, 4, 4, 1)), np.zeros((1, 2, 3)), np.array([0.1]), pre,
                        dict(_META))
    validate_distilled(good, "here.npz")
    validate_distilled(good._replace(preprocessor=None), "here.npz")
    with pytest.raises(ValueError, match=r"here\.npz: y has shape"):
        validate_distilled(good._replace(y=np.zeros((1, 3, 3))), "here.npz")
    with pytest.raises(ValueError, match=r"here\.npz: preprocessing array pre_mean"):
        validate_distilled(good._replace(x=np.zeros((1, 2, 5, 1))), "here.npz")


@pytest.mark.parametrize("bad", ["x nan", "x inf", "y nan", "y inf", "lr inf", "lr negative",
                                 "meta"])
def test_save_refuses_bad_values_before_writing(tmp_path, bad):
    pre, _ = _pre()
    x = np.zeros((2, 5, 4, 4, 1), np.float32)
    y = np.full((2, 5, 3), 1 / 3, np.float32)
    lr = np.array([0.1, np.nan], np.float32)
    meta = dict(_META)
    what, kind = bad.split()[0], bad.split()[-1]
    if what in ("x", "y"):
        arr = x if what == "x" else y
        arr[1, 2, 0] = np.nan if kind == "nan" else np.inf
    elif what == "lr":
        lr[0] = np.inf if kind == "inf" else -1.0
    else:
        del meta["dataset"]
    with pytest.raises(ValueError) as e:
        save_distilled(tmp_path / "out" / "distilled.npz", x, y, lr, pre, meta)
    msg = str(e.value)
    assert "refusing to write" in msg and str(tmp_path / "out" / "distilled.npz") in msg
    assert {"x": "x contains", "y": "y contains", "lr": "lr has invalid values",
            "meta": "meta lacks 'dataset'"}[what] in msg
    out = tmp_path / "out"
    assert not out.exists() or os.listdir(out) == []  # nothing written, no temp file left
