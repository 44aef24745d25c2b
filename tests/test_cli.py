"""The jdd command line end to end on digits (few steps), and its errors."""

import json
import os

import numpy as np
import pytest

from jdd.artifacts import load_distilled
from jdd.cli import main

KEYS = {"test_accuracy_mean", "test_accuracy_std", "n_models", "learner"}


def _check_metrics(path, method, ipc, seeds):
    m = json.loads(open(path).read())
    for k in ("method", "dataset", "ipc", "seeds", "distill_seconds", "result", "baselines",
              "versions"):
        assert k in m, k
    assert (m["method"], m["dataset"], m["ipc"], m["seeds"]) == (method, "digits", ipc, seeds)
    for r in (m["result"], m["baselines"]["random_subset"], m["baselines"]["full_data"]):
        assert KEYS <= set(r)
        assert 0.0 <= r["test_accuracy_mean"] <= 1.0 and r["test_accuracy_std"] >= 0.0
    assert m["versions"]["jax"]
    return m


def test_distill_unrolled_end_to_end_and_evaluate(tmp_path, capsys):
    out = tmp_path / "run"
    rc = main(["distill", "--method", "unrolled", "--dataset", "digits", "--ipc", "1",
               "--seeds", "2", "--steps", "6", "--log-every", "3", "--inner-steps", "3",
               "--hidden", "16", "--n-models", "2", "--full-data-epochs", "2",
               "--full-data-models", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    assert capsys.readouterr().out == ""  # --quiet prints nothing
    m = _check_metrics(out / "metrics.json", "unrolled", 1, 2)
    assert m["result"]["n_models"] == 4 and len(m["result"]["per_seed_mean"]) == 2
    assert m["baselines"]["random_subset"]["n_models"] == 2
    assert m["baselines"]["full_data"]["n_models"] == 1   # --full-data-models
    assert len(m["history"]["loss"]) == 2 and len(m["history"]["steps"]) == 2
    ds = load_distilled(out)
    assert ds.x.shape == (2, 10, 8, 8, 1) and ds.y.shape == (2, 10, 10) and ds.lr.shape == (2,)
    assert np.all(np.isfinite(ds.lr))
    np.testing.assert_allclose(ds.y.sum(-1), 1.0, rtol=1e-5)
    assert ds.meta["method"] == "unrolled" and ds.meta["preprocess"] == "standardize"
    for f in ("distilled.png", "loss.png"):
        assert (out / f).read_bytes()[:4] == b"\x89PNG"
    assert not [f for f in os.listdir(out) if f.endswith(".tmp")]

    rc = main(["evaluate", str(out), "--model", "convnet", "--width", "8", "--depth", "2",
               "--steps", "3", "--n-models", "2", "--no-baselines"])
    assert rc == 0
    text = capsys.readouterr().out
    assert "convnet" in text and "distilled (unrolled, ipc 1)" in text
    e = json.loads((out / "eval-convnet-depth=2-norm=instance-width=8.json").read_text())
    assert e["result"]["n_models"] == 4 and "convnet" in e["result"]["learner"]


def test_distill_kip_end_to_end(tmp_path):
    out = tmp_path / "kip"
    rc = main(["distill", "--method", "kip", "--kernel", "fc-ntk", "--kernel-depth", "2",
               "--ipc", "1", "--seeds", "2", "--steps", "30", "--log-every", "10", "--lr", "0.03",
               "--schedule", "cosine", "--batch-size", "128", "--n-models", "1",
               "--out", str(out), "--quiet"])
    assert rc == 0
    m = _check_metrics(out / "metrics.json", "kip", 1, 2)
    assert m["config"]["outer_schedule"] == "cosine" and m["config"]["kernel_depth"] == 2
    assert "krr[fc-ntk" in m["result"]["learner"]
    # 30 KIP steps already beat random single images per class by a wide margin under KRR
    assert (m["result"]["test_accuracy_mean"]
            > m["baselines"]["random_subset"]["test_accuracy_mean"] + 0.1)
    ds = load_distilled(out)
    assert ds.x.shape == (2, 10, 8, 8, 1) and ds.y.shape == (2, 10, 10)


@pytest.mark.parametrize("solver", ["svd", "gram"])
def test_distill_closed_form_end_to_end(tmp_path, solver):
    out = tmp_path / "cf"
    rc = main(["distill", "--method", "krr-closed-form", "--features", "linear", "--ipc", "1",
               "--seeds", "1", "--n-models", "2", "--ridge-solver", solver, "--out", str(out),
               "--quiet"])
    assert rc == 0
    m = _check_metrics(out / "metrics.json", "krr-closed-form", 1, 1)
    assert m["config"]["ridge_solver"] == solver
    # the distilled set trains the original model: same accuracy as the full-data learner
    assert abs(m["result"]["test_accuracy_mean"]
               - m["baselines"]["full_data"]["test_accuracy_mean"]) < 1e-6
    assert m["closed_form"]["rel_err_W"][0] < 1e-2
    assert "ridge[linear" in m["result"]["learner"]


@pytest.mark.parametrize("features", ["linear", "rff", "fcnn"])
@pytest.mark.parametrize("init", ["noise", "real"])
def test_closed_form_defaults_reproduce_the_original_model(tmp_path, features, init):
    """With the DEFAULT flags (float64 construction and evaluation) the distilled set's ridge
    model is the original one: identical test accuracy, W equal to float64 rounding."""
    out = tmp_path / f"cf-{features}-{init}"
    rc = main(["distill", "--method", "krr-closed-form", "--features", features, "--init", init,
               "--ipc", "1", "--n-models", "1", "--out", str(out), "--quiet"])
    assert rc == 0
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["float64"] is True
    assert (m["result"]["test_accuracy_mean"]
            == m["baselines"]["full_data"]["test_accuracy_mean"])
    assert max(m["closed_form"]["rel_err_W"]) < 1e-8
    assert load_distilled(out).x.dtype == np.float64


@pytest.mark.parametrize("argv,msg", [
    (["--method", "magic"], "valid methods: unrolled, kip, krr-closed-form, dc"),
    (["--method", "unrolled", "--dataset", "imagenet"], "--dataset: expected one of: digits"),
    (["--method", "unrolled", "--ipc", "500"], "ipc=500 but class"),
    (["--method", "unrolled", "--model", "vgg"], "--model: expected one of: mlp"),
    (["--method", "unrolled", "--memory", "remat"], "--memory: expected one of: unroll"),
    (["--method", "unrolled", "--seeds", "0"], "--seeds: expected an integer >= 1 and <= 4096; got 0"),
    (["--method", "unrolled", "--steps", "0"], "--steps: expected an integer >= 1"),
    (["--method", "unrolled", "--lr", "nan"], "--lr: expected a number > 0"),
    (["--method", "unrolled", "--lr", "0"], "--lr: expected a number > 0"),
    (["--method", "unrolled", "--lr", "-1"], "--lr: expected a number > 0"),
    (["--method", "unrolled", "--inner-lr", "-0.1"], "--inner-lr: expected a number > 0"),
    (["--method", "unrolled", "--inner-lr", "0"], "--inner-lr: expected a number > 0"),
    (["--method", "unrolled", "--zca-reg", "-1"], "--zca-reg: expected a number >= 0"),
    (["--method", "unrolled", "--norm", "batch"], "--norm: expected one of: instance"),
    (["--method", "unrolled", "--hidden", "0"], "--hidden: expected a tuple of integers >= 1"),
    (["--method", "unrolled", "--inner-optimizer", "lbfgs"], "--inner-optimizer: expected one"),
    (["--method", "unrolled", "--full-data-epochs", "0"], "--full-data-epochs: expected an"),
    (["--method", "unrolled", "--full-data-models", "0"], "--full-data-models: expected an"),
    (["--method", "unrolled", "--batch-size", "abc"], "--batch-size: expected an integer"),
    (["--method", "unrolled", "--kernel", "fc-ntk"], "not an option of --method unrolled"),
    (["--method", "kip", "--kernel", "laplace"], "--kernel: expected one of: fc-ntk"),
    (["--method", "kip", "--kernel-depth", "-1"], "--kernel-depth: expected an integer >= 1 and <= 64"),
    (["--method", "kip", "--kernel-depth", "0"], "--kernel-depth: expected an integer >= 1 and <= 64"),
    (["--method", "kip", "--reg", "-0.001"], "--reg: expected a number >= 0"),
    (["--method", "kip", "--full-data-max", "0"], "--full-data-max: expected an integer >= 1"),
    (["--method", "kip", "--init", "zeros"], "--init: expected one of: real, noise"),
    (["--method", "krr-closed-form", "--features", "poly"], "--features: expected one of"),
    (["--method", "krr-closed-form", "--lam-s", "-1"], "--lam-s: expected a number >= 0"),
    (["--method", "unrolled", "--dataset", "mnist", "--data-dir", "/nonexistent/dir"], "MNIST"),
    # instance norm of the 1x1 maps that 8x8 digits leave: refused before anything compiles
    (["--method", "dm", "--model", "resnet", "--width", "4"],
     "--model resnet cannot take digits inputs of shape (8, 8, 1)"),
    (["--method", "dc", "--depth", "4", "--width", "4"], "ConvNet(depth=4) block 4"),
    (["--method", "dm", "--eval-model", "resnet", "--eval-width", "4"],
     "--eval-model resnet cannot take digits"),
])
def test_bad_input_gives_one_clear_error_and_writes_nothing(tmp_path, capsys, argv, msg):
    out = tmp_path / "never"
    rc = main(["distill", *argv, "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err
    assert not out.exists()


@pytest.mark.parametrize("where", ["file", "under-file", "not-writable"])
def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, where):
    f = tmp_path / "afile"
    f.write_text("x")
    out = {"file": f, "under-file": f / "run", "not-writable": tmp_path / "ro" / "run"}[where]
    if where == "not-writable":  # root ignores permission bits: make the check itself say no
        real = os.access
        monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(tmp_path)
                            else real(p, m))
    rc = main(["distill", "--method", "unrolled", "--dataset", "mnist", "--data-dir",
               "/nonexistent", "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "--out" in err and "MNIST" not in err  # refused before the data was looked at


def test_evaluate_missing_run(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "nope")]) == 2
    assert "distilled.npz" in capsys.readouterr().err


def _saved_set(tmp_path, **change):
    """A valid small digits run folder written with save_distilled (no distillation)."""
    from jdd.artifacts import save_distilled
    from jdd.data import load_digits, preprocess
    train, test = load_digits()
    _, _, pre = preprocess(train, test, "standardize")
    x = np.zeros((1, 10, 8, 8, 1), np.float32)
    y = np.eye(10, dtype=np.float32)[None]
    meta = {"method": "unrolled", "dataset": "digits", "ipc": 1, "num_classes": 10,
            "learner": {"kind": "network", "model": "mlp(hidden=(16,))", "steps": 3,
                        "optimizer": "adam", "lr_default": 0.01},
            "config": {"model": "mlp", "hidden": [16]}}
    arrays = {"x": x, "y": y, "lr": np.array([0.05], np.float32), "meta": meta}
    arrays.update(change)
    path = tmp_path / "run"
    save_distilled(path / "distilled.npz", arrays["x"], arrays["y"], arrays["lr"], pre,
                   arrays["meta"])
    return path


@pytest.mark.parametrize("argv,msg", [
    (["--model", "vgg"], "--model: expected one of"),
    (["--n-models", "0"], "--n-models: expected an integer >= 1"),
    (["--full-data-models", "-1"], "--full-data-models: expected an integer >= 1"),
    (["--lr", "nan"], "--lr: expected a number > 0"),
    (["--memory", "unroll"], "unrecognized arguments: --memory"),
    (["--width", "64"], "--width: the mlp network has no width (it is an option of --model "
                        "convnet / resnet / two_layer)"),
    (["--model", "resnet", "--depth", "2"], "--depth: the resnet network has no depth"),
    (["--model", "convnet", "--hidden", "32"], "--hidden: the convnet network has no hidden"),
    (["--kernel", "fc-ntk"], "--kernel: an option of the krr learner"),
    (["--learner", "krr", "--steps", "3"], "--steps: the krr learner trains no network"),
    (["--learned-lr", "maybe"], "--learned-lr: expected one of: auto, yes, no"),
])
def test_evaluate_bad_options_are_refused(tmp_path, capsys, argv, msg):
    run = _saved_set(tmp_path)
    with pytest.raises(SystemExit) if "unrecognized" in msg else _nothing():
        # --data-dir /nonexistent: the option is refused before any data is looked for
        rc = main(["evaluate", str(run), "--data-dir", "/nonexistent", *argv])
        assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and "nonexistent" not in err, err


class _nothing:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def test_evaluate_refuses_a_set_for_another_dataset_shape(tmp_path, capsys):
    run = _saved_set(tmp_path, x=np.zeros((1, 10, 8, 8, 1), np.float32),
                     y=np.eye(12, dtype=np.float32)[None, :10],
                     meta={"method": "unrolled", "dataset": "digits", "ipc": 1})
    assert main(["evaluate", str(run), "--n-models", "1", "--no-baselines"]) == 2
    assert "labels for 12 classes" in capsys.readouterr().err


def test_evaluate_refuses_a_network_that_cannot_take_the_inputs(tmp_path, capsys):
    run = _saved_set(tmp_path)
    # ResNet-18's last stage has 1x1 maps on 8x8 digits: instance norm would output a constant
    assert main(["evaluate", str(run), "--model", "resnet", "--width", "4", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--model resnet cannot take digits inputs of shape (8, 8, 1)" in err, err
    assert err.count("\n") == 1 and not list(run.glob("eval-*.json"))


def test_experts_refuse_a_network_that_cannot_take_the_inputs(tmp_path, capsys):
    out = tmp_path / "experts"
    assert main(["experts", "--dataset", "digits", "--model", "resnet", "--width", "4",
                 "--out", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "--model resnet cannot take digits inputs of shape (8, 8, 1)" in err, err
    assert err.count("\n") == 1 and not out.exists()


def test_evaluate_uses_the_learned_lr_only_on_its_own_architecture(tmp_path):
    from jdd.cli import EvaluateConfig, _eval_learner
    from jdd.data import load_digits
    run = _saved_set(tmp_path)
    meta = load_distilled(run).meta
    train, _ = load_digits()
    _, _, same = _eval_learner(EvaluateConfig(), meta, train)
    _, _, other = _eval_learner(EvaluateConfig(model="convnet", width=8, depth=2), meta, train)
    _, _, given = _eval_learner(EvaluateConfig(lr=0.1), meta, train)
    assert (same, other, given) == (True, False, False)


_PROTOCOL_META = {"method": "dm", "dataset": "digits", "ipc": 1, "num_classes": 10,
                  "learner": {"kind": "network", "model": "convnet(depth=2, norm=instance, width=8)",
                              "epochs": 4, "batch_size": 256, "augmentation": "none",
                              "full_data_epochs": 2, "lr_default": 0.01}}


@pytest.mark.parametrize("protocol,argv,msg", [
    (False, ["--epochs", "5"], "--epochs: this run's learner trains for a number of steps; "
                               "use --steps"),
    (False, ["--full-data-epochs", "5"], "--full-data-epochs: this run's learner trains for a "
                                         "number of steps"),
    (True, ["--steps", "5"], "--steps: this run's learner trains for epochs (the image "
                             "protocol); use --epochs"),
    (True, ["--full-data-epochs", "0"], "--full-data-epochs: expected an integer >= 1"),
])
def test_evaluate_refuses_a_length_option_its_learner_does_not_have(tmp_path, capsys, protocol,
                                                                     argv, msg):
    run = _saved_set(tmp_path, **({"meta": _PROTOCOL_META} if protocol else {}))
    assert main(["evaluate", str(run), "--quiet", "--data-dir", "/nonexistent", *argv]) == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1 and not list(run.glob("eval-*.json")), err


def test_evaluate_full_data_epochs_sets_the_protocol_baseline(tmp_path):
    from jdd.cli import EvaluateConfig, _eval_learner
    from jdd.data import load_digits
    meta = load_distilled(_saved_set(tmp_path, meta=_PROTOCOL_META)).meta
    train, _ = load_digits()
    runs = _eval_learner(EvaluateConfig(), meta, train)[0]
    mine = _eval_learner(EvaluateConfig(full_data_epochs=7, epochs=3), meta, train)[0]
    assert (runs.config["full_data_epochs"], runs.config["epochs"]) == (2, 4)
    assert (mine.config["full_data_epochs"], mine.config["epochs"]) == (7, 3)


def test_evaluate_takes_the_runs_network_unless_told_otherwise(tmp_path):
    from jdd.cli import EvaluateConfig, _eval_learner, _eval_network
    from jdd.data import load_digits
    meta = dict(_PROTOCOL_META, config={"eval_model": "convnet", "eval_width": 8,
                                        "eval_depth": 2, "eval_norm": "instance",
                                        "model": "convnet", "width": 128, "depth": 3})
    meta = load_distilled(_saved_set(tmp_path, meta=meta)).meta
    train, _ = load_digits()
    assert _eval_network(EvaluateConfig(), meta) == (
        "convnet", {"width": 8, "depth": 2, "norm": "instance"})   # the evaluation network
    assert _eval_network(EvaluateConfig(depth=3), meta)[1] == {"width": 8, "depth": 3,
                                                               "norm": "instance"}
    assert _eval_network(EvaluateConfig(model="resnet"), meta) == (
        "resnet", {"width": 128, "norm": "instance"})               # another kind: defaults
    same = [_eval_learner(EvaluateConfig(**kw), meta, train)[2]
            for kw in ({}, {"model": "convnet"}, {"width": 16}, {"learned_lr": "no"})]
    assert same == [True, True, False, False]


def test_help_is_complete(capsys):
    for argv in (["--help"], ["evaluate", "--help"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 0
    from jdd import methods
    for name in methods.names():
        assert main(["distill", "--method", name, "--help"]) == 0
    assert main(["distill", "--help"]) == 0
    text = capsys.readouterr().out
    for word in ("--method", "--ipc", "--seeds", "--steps", "--out", "--quiet", "--model",
                 "--kernel", "--features", "--n-models", "--memory", "--preprocess", "--lr-net",
                 "--buffer"):
        assert word in text, word
    assert main(["methods"]) == 0
    assert "krr-closed-form" in capsys.readouterr().out


def test_evaluate_refuses_a_run_folder_it_cannot_write_before_any_work(tmp_path, capsys,
                                                                       monkeypatch):
    run = _saved_set(tmp_path)
    real = os.access
    monkeypatch.setattr(os, "access", lambda p, m: False if str(p) == str(run) else real(p, m))
    assert main(["evaluate", str(run), "--data-dir", "/nonexistent", "--quiet"]) == 2
    err = capsys.readouterr().err
    assert f"{run} is not writable" in err and "nonexistent" not in err, err


def test_none_is_a_value_where_it_is_one_of_the_choices():
    """`--norm none` asks for no normalisation (not "the run's"), `--preprocess none` for none:
    an optional option whose choices include "none" takes it literally; unset stays unset."""
    from jdd.cli import EvaluateConfig, _eval_network
    from jdd.config import from_dict
    from jdd.interop.imports import ImportConfig
    meta = {"config": {"eval_model": "convnet", "eval_norm": "instance"}}
    assert _eval_network(from_dict(EvaluateConfig, {"norm": "none"}), meta)[1]["norm"] == "none"
    assert _eval_network(from_dict(EvaluateConfig, {}), meta)[1]["norm"] == "instance"
    assert from_dict(EvaluateConfig, {"model": "none"}).model is None   # not a choice: unset
    cfg = from_dict(ImportConfig, {"preprocess": "none", "dataset": "digits", "out": "x"})
    assert cfg.preprocess == "none"
