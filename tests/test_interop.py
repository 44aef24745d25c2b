"""jdd export / jdd import: round trips through every format, torch's own .pt layout read without
torch, and files that are not what they claim refused with one clear error."""

import io
import json
import os
import pickle
import zipfile

import numpy as np
import pytest

from jdd.artifacts import load_distilled
from jdd.cli import main
from jdd.interop.formats import FormatError, read_tensors, tensor_bytes
from jdd.interop.pngs import read_folder, write_folder

FIXTURE = os.path.join(os.path.dirname(__file__), "fixtures", "torch_dict.pt")


@pytest.fixture
def run(tiny_soft_run):
    return tiny_soft_run


def _accuracies(run_dir):
    assert main(["evaluate", str(run_dir), "--n-models", "2", "--no-baselines", "--quiet"]) == 0
    (name,) = [n for n in os.listdir(run_dir) if n.startswith("eval-")]
    return json.loads((run_dir / name).read_text())["result"]["accuracies"]


def test_export_writes_pixel_space_images_labels_and_recipe(run):
    ds = load_distilled(run)
    assert main(["export", str(run), "--quiet"]) == 0
    folder = run / "export-safetensors"
    tensors, meta = read_tensors(str(folder / "seed0.safetensors"))
    pixels = np.asarray(ds.preprocessor.invert(ds.x[0]))
    np.testing.assert_array_equal(tensors["images"], pixels.transpose(0, 3, 1, 2))  # NCHW
    np.testing.assert_array_equal(tensors["soft_labels"], ds.y[0])
    np.testing.assert_array_equal(tensors["labels"], np.argmax(ds.y[0], -1))
    assert tensors["labels"].dtype == np.int64 and tensors["lr"].shape == ()
    assert float(tensors["lr"]) == pytest.approx(float(ds.lr[0]))
    info = json.loads((folder / "export.json").read_text())
    assert json.loads(meta)["run_id"] == info["run_id"] == ds.meta["run_id"]
    assert info["preprocessing"]["kind"] == "standardize"
    np.testing.assert_allclose(info["preprocessing"]["mean"],
                               np.asarray(ds.preprocessor.mean).reshape(-1), rtol=1e-6)
    assert info["evaluation_recipe"] == ds.meta["learner"]
    manifest = json.loads((folder / "manifest.json").read_text())
    assert set(manifest["files"]) == {"seed0.safetensors", "export.json"}
    # nhwc on request, npz the same numbers
    assert main(["export", str(run), "--format", "npz", "--layout", "nhwc", "--quiet"]) == 0
    t2, _ = read_tensors(str(run / "export-npz" / "seed0.npz"))
    np.testing.assert_array_equal(t2["images"], pixels)


def test_export_import_evaluate_round_trip_gives_the_same_accuracy(run, tmp_path, capsys):
    before = _accuracies(run)
    for fmt in ("safetensors", "npz", "png"):
        assert main(["export", str(run), "--format", fmt, "--overwrite", "--quiet"]) == 0
        src = run / f"export-{fmt}" / (f"seed0.{fmt}" if fmt != "png" else "seed0")
        out = tmp_path / f"imported-{fmt}"
        assert main(["import", str(src), "--dataset", "digits", "--out", str(out),
                     "--quiet"]) == 0
        a, b = load_distilled(run), load_distilled(out)
        assert b.meta["method"] == "imported" and b.meta["learner"] == a.meta["learner"]
        np.testing.assert_array_equal(b.y, a.y)          # soft labels, PNG included (export.json)
        np.testing.assert_allclose(b.lr, a.lr, rtol=1e-6)
        if fmt == "png":  # 8 bits: within half a step of the exported range, in pixel space
            lo, hi = json.loads((run / "export-png" / "export.json").read_text())["png_range"]
            pa = np.asarray(a.preprocessor.invert(a.x[0]))
            pb = np.asarray(b.preprocessor.invert(b.x[0]))
            assert np.abs(pa - pb).max() <= (hi - lo) / 510 + 1e-6
            continue
        # bit-exact inputs (the export's jdd_preprocessed copy; the pixels agree to 1e-5)
        np.testing.assert_array_equal(b.x, a.x)
        assert json.loads((out / "import.json").read_text())["inputs"].startswith(
            "jdd_preprocessed")
        assert _accuracies(out) == before       # same models, same numbers


def test_pt_files_are_read_weights_only_without_torch():
    t, meta = read_tensors(FIXTURE)                     # written by torch.save itself
    assert meta is None
    np.testing.assert_array_equal(
        t["images"], np.arange(128, dtype=np.float32).reshape(2, 1, 8, 8) / 128)
    np.testing.assert_array_equal(t["labels"], [3, 7])
    assert t["labels"].dtype == np.int64 and t["lr"].shape == () and t["lr"] == np.float32(0.01)
    big = np.arange(24, dtype=np.float64).reshape(4, 6)
    np.testing.assert_array_equal(t["transposed"], big.T)        # strides
    np.testing.assert_array_equal(t["offset_view"], big[1:, 2:])  # storage offset, shared
    assert t["half"].dtype == np.float16 and t["half"].tolist() == [1.5, -2.0]
    assert t["flags"].tolist() == [True, False] and t["bytes"].tolist() == [0, 255]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (self.marker,))


def test_a_pickled_object_in_a_pt_file_is_refused_not_run(tmp_path):
    marker = str(tmp_path / "ran")
    with zipfile.ZipFile(FIXTURE) as src:
        names = src.namelist()
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as dst:
            for n in names:
                data = src.read(n)
                if n.endswith("data.pkl"):
                    data = pickle.dumps({"images": _Payload(marker)}, protocol=2)
                dst.writestr(n, data)
    bad = tmp_path / "evil.pt"
    bad.write_bytes(buf.getvalue())
    with pytest.raises(FormatError, match=r"refers to (posix|os)\.mkdir.*refused without "
                                          r"running it"):
        read_tensors(str(bad))
    assert not os.path.exists(marker)


@pytest.mark.parametrize("fmt", ["safetensors", "npz", "pt"])
def test_truncated_files_are_refused(tmp_path, fmt):
    raw = (open(FIXTURE, "rb").read() if fmt == "pt" else
           tensor_bytes({"images": np.zeros((10, 8, 8, 1), np.float32)}, fmt))
    path = tmp_path / f"cut.{fmt}"
    path.write_bytes(raw[: len(raw) // 2])
    with pytest.raises(FormatError, match="truncated"):
        read_tensors(str(path))


def test_pt_export_without_torch_says_what_to_install(run, capsys):
    import importlib.util
    if importlib.util.find_spec("torch") is None:
        assert main(["export", str(run), "--format", "pt", "--out", str(run / "pt")]) == 2
        err = capsys.readouterr().err
        assert "needs torch" in err and "jdd[torch]" in err and not (run / "pt").exists()
    else:  # with torch installed the file is torch's own, and reads back the same
        assert main(["export", str(run), "--format", "pt", "--out", str(run / "pt"),
                     "--quiet"]) == 0
        import torch
        t = torch.load(str(run / "pt" / "seed0.pt"))
        ds = load_distilled(run)
        pixels = np.asarray(ds.preprocessor.invert(ds.x[0])).transpose(0, 3, 1, 2)
        assert np.array_equal(np.asarray(t["images"].tolist(), np.float32), pixels)
        assert t["labels"].tolist() == np.argmax(ds.y[0], -1).tolist()
        mine, _ = read_tensors(str(run / "pt" / "seed0.pt"))   # jdd's reader agrees with torch
        assert np.array_equal(mine["images"], pixels)


def _npz(path, **arrays):
    np.savez(path, **arrays)
    return str(path)


def _set(m_per_class=1, k=10, shape=(1, 8, 8)):
    rng = np.random.default_rng(0)
    x = rng.random((m_per_class * k,) + shape).astype(np.float32)
    return x, np.repeat(np.arange(k), m_per_class)


@pytest.mark.parametrize("change,msg", [
    (lambda x, y: (x, y + 1), r"class ids span \[1, 10\]; the dataset has 10 classes"),
    (lambda x, y: (x[:, :, :4], y), r"images of shape \(10, 1, 4, 8\); the dataset's are "
                                    r"\(m, 1, 8, 8\) or \(m, 8, 8, 1\)"),
    (lambda x, y: (x * 255, y), r"pixel values span .*expected the data's \[0, 1\].*--scale 255"),
    (lambda x, y: ((x - 0.5) / 0.1, y), r"looks normalised: pass the --mean and --std"),
    (lambda x, y: (x[:9], y[:9]), r"9 examples for 10 classes \(per class \[1, 1, 1, 1, 1, 1, "
                                  r"1, 1, 1, 0\]\); expected a multiple of the class count"),
    (lambda x, y: (np.where(x > 0.5, np.nan, x), y), "NaN/inf"),
    (lambda x, y: (x, y[:5]), r"labels of shape \(5,\); expected \(10,\)"),
    (lambda x, y: (x, np.eye(12)[y]), "soft labels for 12 classes; the dataset has 10"),
])
def test_a_file_that_is_not_what_it_claims_is_refused_before_the_data_loads(
        tmp_path, capsys, monkeypatch, change, msg):
    import jdd.data
    monkeypatch.setattr(jdd.data, "load_dataset",
                        lambda *a, **k: pytest.fail("the dataset was loaded"))
    x, y = change(*_set())
    path = _npz(tmp_path / "set.npz", image_syn=x, label_syn=y)
    out = tmp_path / "out"
    assert main(["import", path, "--dataset", "digits", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("jdd import: error: ")
    assert __import__("re").search(msg, err), err
    assert not out.exists()


@pytest.mark.parametrize("argv,msg", [
    (["--out", "X"], "--dataset: expected the dataset"),
    (["--dataset", "digits"], "--out: expected the run folder"),
    (["--dataset", "digits", "--out", "X", "--mean", "0.5"], "--mean and --std: expected both"),
    (["--dataset", "digits", "--out", "X", "--mean", "0.5", "--std", "0"], "--std: expected"),
    (["--dataset", "digits", "--out", "X", "--scale", "nan"], "--scale: expected"),
    (["--dataset", "digits", "--out", "X", "--protocol", "mtt"], "--protocol: expected one of"),
    (["--dataset", "nope", "--out", "X"], "--dataset: expected one of"),
])
def test_bad_import_options_are_refused(tmp_path, capsys, argv, msg):
    x, y = _set()
    path = _npz(tmp_path / "set.npz", images=x, labels=y)
    argv = [a if a != "X" else str(tmp_path / "out") for a in argv]
    assert main(["import", path] + argv) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1


def test_overshooting_sets_need_pixel_range_unless_they_are_jdd_exports(run, tmp_path,
                                                                         capsys):
    # a foreign set in pixel space that overshoots far (noise-initialised DC does): refused
    # with the hint, accepted with --pixel-range
    x, y = _set()
    x = x * 12 - 5                                      # [-5, 7]
    path = _npz(tmp_path / "far.npz", images=x, labels=y)
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "a")]) == 2
    err = capsys.readouterr().err
    assert "pixel values span [-5" in err and "--pixel-range LO HI" in err
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "a"),
                 "--pixel-range", "-6", "8", "--quiet"]) == 0
    ds = load_distilled(tmp_path / "a")
    np.testing.assert_allclose(np.asarray(ds.preprocessor.invert(ds.x[0])),
                               x.transpose(0, 2, 3, 1), atol=1e-4)
    for bad in (["-6"], ["8", "-6"], ["1", "1"]):
        assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "b"),
                     "--pixel-range", *bad]) == 2
        assert "--pixel-range: expected two numbers LO HI with LO < HI" in \
            capsys.readouterr().err
    # a jdd export says it holds pixel space (export.json): its overshoot is not refused
    assert main(["export", str(run), "--format", "npz", "--overwrite", "--quiet"]) == 0
    src = run / "export-npz" / "seed0.npz"
    t = dict(np.load(src))
    t["images"] = t["images"] * 12 - 5
    far = tmp_path / "export-far"
    far.mkdir()
    np.savez(far / "seed0.npz", **t)
    info = json.loads((run / "export-npz" / "export.json").read_text())
    (far / "export.json").write_text(json.dumps(info))
    # edited images beside the export's exact copy of the set: refused as altered
    assert main(["import", str(far / "seed0.npz"), "--dataset", "digits", "--out",
                 str(tmp_path / "c"), "--quiet"]) == 2
    assert "jdd_preprocessed tensor does not match its images" in capsys.readouterr().err
    del t["jdd_preprocessed"]                     # edited the way another tool would write it
    np.savez(far / "seed0.npz", **t)
    assert main(["import", str(far / "seed0.npz"), "--dataset", "digits", "--out",
                 str(tmp_path / "c"), "--quiet"]) == 0


def test_unknown_suffix_and_missing_keys_are_refused(tmp_path, capsys):
    (tmp_path / "set.txt").write_text("hi")
    assert main(["import", str(tmp_path / "set.txt"), "--dataset", "digits", "--out",
                 str(tmp_path / "o")]) == 2
    assert "unknown file type '.txt'" in capsys.readouterr().err
    x, y = _set()
    path = _npz(tmp_path / "set.npz", pictures=x, labels=y)
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "o")]) == 2
    err = capsys.readouterr().err
    assert "no images tensor" in err and "'pictures'" in err and "--images-key" in err
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "o"),
                 "--images-key", "pictures", "--quiet"]) == 0


def test_imports_from_other_tools_scaled_normalised_nhwc_and_named_png_folders(tmp_path):
    x, y = _set(m_per_class=2)                          # (20, 1, 8, 8) in [0, 1]
    ref = x.transpose(0, 2, 3, 1)
    cases = {
        "u8": dict(images=np.rint(x * 255).astype(np.uint8), labels=y),       # default / 255
        "normalised": dict(image_syn=(x - 0.2) / 0.3, label_syn=y),
        "nhwc": dict(x=ref, y=np.eye(10, dtype=np.float32)[y]),
    }
    extra = {"normalised": ["--mean", "0.2", "--std", "0.3"]}
    for name, arrays in cases.items():
        out = tmp_path / name
        assert main(["import", _npz(tmp_path / f"{name}.npz", **arrays), "--dataset", "digits",
                     "--out", str(out), "--quiet"] + extra.get(name, [])) == 0
        ds = load_distilled(out)
        got = np.asarray(ds.preprocessor.invert(ds.x[0]))
        tol = 0.5 / 255 + 1e-6 if name == "u8" else 1e-5
        np.testing.assert_allclose(got, ref, atol=tol)
        assert ds.meta["ipc"] == 2 and ds.meta["learner"]["augmentation"] != "none"  # dsa
    # a PNG folder from another tool: class folders by name, 8-bit 0..255 = [0, 1]
    folder = tmp_path / "pngs"
    folder.mkdir()
    write_folder(str(folder), ref, y, 0.0, 1.0)
    for i, d in enumerate(sorted(os.listdir(folder))):
        os.rename(folder / d, folder / f"class-{'abcdefghij'[i]}")
    images, labels = read_folder(str(folder))
    np.testing.assert_allclose(images, ref, atol=0.5 / 255 + 1e-6)
    np.testing.assert_array_equal(labels, y)


def test_png_export_is_listed_file_by_file_in_the_manifest(run):
    assert main(["export", str(run), "--format", "png", "--out", str(run / "png"),
                 "--quiet"]) == 0
    files = json.loads((run / "png" / "manifest.json").read_text())["files"]
    pngs = [f for f in files if f.endswith(".png")]
    assert len(pngs) == 10 and "seed0/00/000.png" in files


def test_sets_saved_as_the_official_repositories_save_them(tmp_path, capsys):
    """Files written by torch.save as DC / DSA (nested, normalised) and MTT (a bare tensor in
    class order) save their sets (tests/fixtures/make_torch_fixture.py)."""
    fixtures = os.path.dirname(FIXTURE)
    pixels = (np.arange(640, dtype=np.float32).reshape(10, 1, 8, 8) % 64) / 63
    ref = pixels.transpose(0, 2, 3, 1)
    dc = os.path.join(fixtures, "dc_style.pt")
    assert main(["import", dc, "--dataset", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "no images tensor" in capsys.readouterr().err      # it names what the file holds
    assert main(["import", dc, "--dataset", "digits", "--out", str(tmp_path / "dc"),
                 "--images-key", "data.0.0", "--labels-key", "data.0.1", "--mean", "0.5",
                 "--std", "0.25", "--protocol", "dc", "--quiet"]) == 0
    mtt = os.path.join(fixtures, "mtt_style.pt")
    assert main(["import", mtt, "--dataset", "digits", "--out", str(tmp_path / "x")]) == 2
    assert "--class-major" in capsys.readouterr().err
    assert main(["import", mtt, "--dataset", "digits", "--out", str(tmp_path / "mtt"),
                 "--class-major", "--quiet"]) == 0
    for name, aug in (("dc", "none"), ("mtt", "dsa")):
        ds = load_distilled(tmp_path / name)
        np.testing.assert_allclose(np.asarray(ds.preprocessor.invert(ds.x[0])), ref, atol=1e-5)
        np.testing.assert_array_equal(np.argmax(ds.y[0], -1), np.arange(10))
        assert ds.meta["learner"]["augmentation"].startswith(aug)


def test_recipe_from_scores_a_foreign_set_as_a_run_was_scored(run, tmp_path, capsys):
    x, y = _set()
    path = _npz(tmp_path / "set.npz", images=x, labels=y)
    out = tmp_path / "as-run"
    assert main(["import", path, "--dataset", "digits", "--out", str(out), "--recipe-from",
                 str(run), "--quiet"]) == 0
    assert load_distilled(out).meta["learner"] == load_distilled(run).meta["learner"]
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "o"),
                 "--recipe-from", str(run), "--protocol", "dc"]) == 2
    assert "--protocol and --recipe-from" in capsys.readouterr().err
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "o"),
                 "--recipe-from", str(tmp_path)]) == 2
    assert "--recipe-from: no distilled set" in capsys.readouterr().err


def test_labels_whose_argmax_moved_keep_the_budget_as_ipc(tmp_path):
    """KIP's learned labels can change class: the IPC is examples / classes, as distilled."""
    x, _ = _set(m_per_class=2)
    soft = np.full((20, 10), 0.01, np.float32)
    soft[np.arange(20), np.r_[np.zeros(5, int), np.arange(15) % 10]] = 0.9  # unbalanced argmax
    path = _npz(tmp_path / "kip.npz", images=x, labels=soft.argmax(-1), soft_labels=soft)
    assert main(["import", path, "--dataset", "digits", "--out", str(tmp_path / "o"),
                 "--quiet"]) == 0
    ds = load_distilled(tmp_path / "o")
    assert ds.meta["ipc"] == 2 and np.array_equal(ds.y[0], soft)
    hard = _npz(tmp_path / "hard.npz", images=x, labels=soft.argmax(-1))    # hard, unbalanced
    assert main(["import", hard, "--dataset", "digits", "--out", str(tmp_path / "h"),
                 "--quiet"]) == 0
    info = json.loads((tmp_path / "h" / "import.json").read_text())
    assert info["ipc"] == 2 and info["source"]["examples_per_class"] == [7] + [2] * 4 + [1] * 5
