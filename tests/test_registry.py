"""The method registry: every registered method round-trips through the CLI on digits (few steps,
tiny networks), its options come from its typed config, and bad configs fail before any work."""

import dataclasses
import json

import numpy as np
import pytest

from jdd import methods
from jdd.artifacts import load_distilled
from jdd.cli import main
from jdd.config import ConfigError, from_dict, to_dict, validate

TINY_NET = ["--width", "8", "--depth", "2"]
TINY_EVAL = ["--eval-width", "8", "--eval-depth", "2", "--eval-epochs", "2",
             "--full-data-epochs", "1"]
#: per-method flags that keep a CLI run to seconds (the registry decides which flags exist)
TINY = {
    "unrolled": ["--hidden", "8", "--inner-steps", "2"],
    "kip": ["--batch-size", "64"],
    "krr-closed-form": [],
    "dc": TINY_NET + TINY_EVAL + ["--batch-real", "16"],
    "dsa": TINY_NET + TINY_EVAL + ["--batch-real", "16"],
    "dm": TINY_NET + TINY_EVAL + ["--batch-real", "16"],
    "mtt": TINY_NET + TINY_EVAL + ["--syn-steps", "2", "--expert-epochs", "1",
                                   "--max-start-epoch", "1"],
    "sre2l": TINY_EVAL + ["--teacher-epochs", "1", "--teacher-width", "8", "--no-kd"],
}


@pytest.fixture(scope="module")
def buffer(tmp_path_factory):
    """A tiny expert buffer for --method mtt (jdd experts through the CLI)."""
    out = tmp_path_factory.mktemp("experts") / "buf"
    rc = main(["experts", "--dataset", "digits", "--width", "8", "--depth", "2",
               "--n-experts", "1", "--epochs", "2", "--out", str(out), "--quiet"])
    assert rc == 0
    return out


def test_every_registered_method_has_a_tiny_recipe_here():
    assert set(methods.names()) == set(TINY)


@pytest.mark.parametrize("name", methods.names())
def test_method_round_trips_through_the_cli(tmp_path, buffer, name):
    m = methods.get(name)
    assert m.name == name and dataclasses.is_dataclass(m.config)
    required = {"buffer": str(buffer)} if name == "mtt" else {}  # MTT needs its expert folder
    cfg = validate(m.config(**required))  # the declared defaults are valid
    assert from_dict(m.config, to_dict(cfg)) == cfg  # and survive a dict (config file) round trip
    out = tmp_path / name
    extra = ["--buffer", str(buffer)] if name == "mtt" else []
    rc = main(["distill", "--method", name, "--dataset", "digits", "--ipc", "1", "--seeds", "2",
               "--steps", "2", "--log-every", "1", "--n-models", "1", *TINY[name], *extra,
               "--out", str(out), "--quiet"])
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == name and metrics["run_config"]["seeds"] == 2
    for k in dataclasses.fields(m.config):  # the run's config is the method's declared config
        assert k.name in metrics["config"]
    for r in (metrics["result"], metrics["baselines"]["random_subset"],
              metrics["baselines"]["full_data"]):
        assert 0.0 <= r["test_accuracy_mean"] <= 1.0
        assert r["learner"] == metrics["result"]["learner"] or r is metrics["baselines"]["full_data"]
    assert metrics["storage"]["total_bytes"] > 0
    ds = load_distilled(out)
    assert ds.x.shape[:2] == (2, 10) and np.all(np.isfinite(ds.x))
    assert ds.meta["method"] == name and ds.meta["config"] == metrics["config"]
    assert (out / "distilled.png").exists()


def test_storage_of_hard_and_soft_labelled_sets():
    from jdd.storage import set_storage as storage
    x = np.zeros((1, 10, 8, 8, 1), np.float32)
    hard = storage(x, np.eye(10, dtype=np.float32)[None], np.array([np.nan]), True)
    soft = storage(x, np.full((1, 10, 10), 0.1, np.float32), np.array([0.01]), False)
    assert hard["total_bytes"] == 4 * (10 * 64 + 10)
    assert soft["total_bytes"] == 4 * (10 * 64 + 100 + 1)
    # the full data it stands for, and a float64 set (the exact closed form) at 8 bytes a value
    full = storage(x, np.full((1, 10, 10), 0.1, np.float32), np.array([0.01]), False, 1347)
    assert full["full_data"]["total_bytes"] == 4 * (1347 * 64 + 1347)
    assert full["fraction_of_full_data"] == pytest.approx(4 * 741 / (4 * 1347 * 65))
    f64 = storage(x.astype(np.float64), np.full((1, 10, 10), 0.1), np.array([np.nan]), False)
    assert (f64["inputs_bytes"], f64["labels_bytes"], f64["lr_bytes"]) == (8 * 640, 8 * 100, 0)


@pytest.mark.parametrize("argv,msg", [
    (["--method", "dc", "--lr", "-1"], "--lr: expected a number > 0"),
    (["--method", "dc", "--distance", "l7"], "--distance: expected one of"),
    (["--method", "dm", "--batch-real", "0"], "--batch-real: expected an integer >= 1"),
    (["--method", "dsa", "--eval-epochs", "0"], "--eval-epochs: expected an integer >= 1"),
    (["--method", "dm", "--eval-model", "vgg"], "--eval-model: expected one of"),
    (["--method", "mtt"], "--buffer"),
    (["--method", "mtt", "--buffer", "/nonexistent/buffer"], "/nonexistent/buffer"),
])
def test_bad_method_configs_fail_before_any_work(tmp_path, capsys, argv, msg):
    out = tmp_path / "never"
    rc = main(["distill", *argv, "--out", str(out), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert msg in err and err.count("\n") == 1, err
    assert not out.exists()


def test_mtt_refuses_a_buffer_of_another_architecture_or_too_short(tmp_path, buffer, capsys):
    common = ["distill", "--method", "mtt", "--buffer", str(buffer), "--ipc", "1",
              "--steps", "1", "--out", str(tmp_path / "x"), "--quiet"]
    assert main(common + ["--width", "16", "--depth", "2", "--expert-epochs", "1",
                          "--max-start-epoch", "1"]) == 2
    err = capsys.readouterr().err
    assert "another architecture" in err and "width=16" in err and "width=8" in err
    assert main(common + TINY_NET + ["--expert-epochs", "2", "--max-start-epoch", "2"]) == 2
    err = capsys.readouterr().err
    assert "its experts have 2 epochs" in err and "architecture" not in err
    assert not (tmp_path / "x").exists()


def test_config_errors_name_the_option():
    with pytest.raises(ConfigError, match="--ipc"):
        from_dict(methods.RunConfig, {"ipc": 0, "out": "x"})
    with pytest.raises(ConfigError, match="unknown option"):
        from_dict(methods.get("dm").config, {"lr_image": 1.0})
    with pytest.raises(ConfigError, match="--hidden"):
        validate(methods.get("unrolled").config(hidden=(0,)))
    with pytest.raises(ConfigError, match="unknown method 'magic'"):
        methods.get("magic")


def test_an_optional_choice_is_described_once_with_or_none(capsys):
    from jdd.cli import EvaluateConfig
    from jdd.config import convert, fields
    field, tp, meta = next(x for x in fields(EvaluateConfig) if x[0].name == "model")
    assert convert("model", tp, meta, "none") is None
    assert convert("model", tp, meta, "resnet") == "resnet"
    with pytest.raises(ConfigError, match=r"one of: mlp, convnet, resnet, two_layer \(or none\); "
                                          r"got 'vgg'"):
        convert("model", tp, meta, "vgg")
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert "one of: mlp, convnet, resnet, two_layer (or none)" in shown and "None," not in shown
