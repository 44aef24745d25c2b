"""DD-Ranking's robust scores: the formulas against the arithmetic written out, and
``jdd evaluate --robust`` against its arms computed directly on a tiny set."""

import json
import math

import jax
import numpy as np
import pytest

from jdd.artifacts import load_distilled
from jdd.cli import EvaluateConfig, _eval_learner, main
from jdd.data import load_dataset
from jdd.evaluate import evaluate_full_data, evaluate_random_subset, evaluate_set
from jdd.robust import augmentation_robust_score, label_robust_score, normalise


def test_scores_are_the_written_out_arithmetic():
    e = math.e
    assert normalise(-1) == 0 and normalise(1) == pytest.approx(1)
    assert normalise(0) == pytest.approx((1 - 1 / e) / (e - 1 / e))          # 0.2689
    r = label_robust_score(full_hard=0.95, syn_hard=0.70, syn=0.85, rand=0.60)
    assert r["hlr"] == pytest.approx(0.25) and r["ior"] == pytest.approx(0.25)
    assert r["alpha"] == pytest.approx(0.5 * 0.25 - 0.5 * 0.25)
    r = label_robust_score(0.9, 0.5, 0.8, 0.4, w=0.25)
    alpha = 0.25 * (0.8 - 0.4) - 0.75 * (0.9 - 0.5)                           # -0.2
    assert r["lrs"] == pytest.approx((math.exp(alpha) - 1 / e) / (e - 1 / e))
    a = augmentation_robust_score(syn_aug=0.9, rand_aug=0.7, syn_noaug=0.8, rand_noaug=0.5)
    beta = 0.5 * 0.2 + 0.5 * 0.3
    assert a["beta"] == pytest.approx(beta)
    assert a["ars"] == pytest.approx((math.exp(beta) - 1 / e) / (e - 1 / e))
    # a set no better than random with its labels, and fully dependent on them: the floor side
    assert label_robust_score(1.0, 0.0, 0.5, 0.5)["lrs"] < normalise(0) < \
        label_robust_score(0.9, 0.9, 0.9, 0.5)["lrs"]


@pytest.fixture
def soft_run(tiny_soft_run):
    return tiny_soft_run


def test_evaluate_robust_equals_its_arms_computed_directly(soft_run):
    assert main(["evaluate", str(soft_run), "--robust", "--n-models", "2",
                 "--full-data-models", "1", "--seed", "3", "--quiet"]) == 0
    (name,) = [p.name for p in soft_run.iterdir() if p.name.startswith("eval-")]
    got = json.loads((soft_run / name).read_text())["robust"]
    assert json.loads((soft_run / "metrics.json").read_text())["robust"][name[5:-5]] == got
    # the arms, directly: the run's learner with and without DSA, the same keys
    ds = load_distilled(soft_run)
    train, test = load_dataset("digits")
    train = train.replace(x=ds.preprocessor.apply(train.x))
    test = test.replace(x=ds.preprocessor.apply(test.x))
    c = EvaluateConfig(n_models=2, full_data_models=1, seed=3)
    learner = _eval_learner(c, ds.meta, train)[0]
    dsa = _eval_learner(EvaluateConfig(augment="dsa"), ds.meta, train)[0]
    key = jax.random.key(3)
    hard = np.eye(10, dtype=np.float32)[np.argmax(ds.y[0], -1)]
    assert not np.array_equal(hard, ds.y[0])                 # the unrolled set's labels are soft
    acc = {
        "syn": evaluate_set(learner, jax.random.fold_in(key, 0), ds.x[0], ds.y[0], test, 2,
                            ds.lr[0]).mean,
        "syn_hard": evaluate_set(learner, jax.random.fold_in(key, 0), ds.x[0], hard, test, 2,
                                 ds.lr[0]).mean,
        "rand": evaluate_random_subset(learner, jax.random.fold_in(key, 1 << 20), train, test,
                                       1, 2).mean,
        "full_hard": evaluate_full_data(learner, jax.random.fold_in(key, 1 << 21), train, test,
                                        1).mean,
        "syn_aug": evaluate_set(dsa, jax.random.fold_in(key, 0), ds.x[0], ds.y[0], test, 2,
                                ds.lr[0]).mean,
        "rand_aug": evaluate_random_subset(dsa, jax.random.fold_in(key, 1 << 20), train, test,
                                           1, 2).mean,
    }
    for k in ("syn", "syn_hard", "rand", "full_hard"):
        assert got["arms"][k] == pytest.approx(acc[k], abs=1e-7), k
    e = math.e
    alpha = 0.5 * (acc["syn"] - acc["rand"]) - 0.5 * (acc["full_hard"] - acc["syn_hard"])
    assert got["lrs"]["lrs"] == pytest.approx((math.exp(alpha) - 1 / e) / (e - 1 / e), abs=1e-7)
    beta = 0.5 * (acc["syn_aug"] - acc["rand_aug"]) + 0.5 * (acc["syn"] - acc["rand"])
    assert got["ars"]["ars"] == pytest.approx((math.exp(beta) - 1 / e) / (e - 1 / e), abs=1e-7)
    assert got["other_augmentation"]["augmentation"] != "none"


def test_robust_needs_the_baselines_and_krr_has_no_augmentation_score(soft_run, capsys):
    assert main(["evaluate", str(soft_run), "--robust", "--no-baselines"]) == 2
    assert "--robust and --no-baselines" in capsys.readouterr().err
    assert main(["evaluate", str(soft_run), "--learner", "krr", "--augment", "dsa"]) == 2
    assert "krr learner does not augment" in capsys.readouterr().err
    assert main(["evaluate", str(soft_run), "--learner", "krr", "--robust", "--n-models", "1",
                 "--quiet"]) == 0
    got = json.loads((soft_run / "eval-krr-fc-ntk.json").read_text())["robust"]
    assert got["ars"] is None and "does not augment" in got["ars_why_not"]
    assert 0 <= got["lrs"]["lrs"] <= 1
