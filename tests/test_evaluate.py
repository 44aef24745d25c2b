"""Evaluation protocol: vmapped models == looped, baselines sample per class, no test leakage."""

import jax
import jax.numpy as jnp
import numpy as np

from jdd.data import Dataset, load_digits
from jdd.evaluate import (EvalResult, evaluate_full_data, evaluate_random_subset, evaluate_set,
                          full_data_config, network_learner)
from jdd.models import make_model
from jdd.train import TrainConfig, accuracy, init_and_fit


def _setup():
    train, test = load_digits()
    model = make_model("mlp", 10, hidden=(16,))
    cfg = TrainConfig(steps=15, optimizer="adam")
    return train, test, model, cfg


def test_evaluate_set_equals_looped_training():
    train, test, model, cfg = _setup()
    learner = network_learner(model, cfg, lr=0.01)
    x, y = train.x[:30], train.one_hot()[:30]
    res = evaluate_set(learner, jax.random.key(0), x, y, test, n_models=3)
    keys = jax.random.split(jax.random.key(0), 3)
    looped = [float(accuracy(model, init_and_fit(model, k, x, y, 0.01, cfg), test.x, test.y))
              for k in keys]
    np.testing.assert_allclose(res.accuracies, looped, atol=1e-6)
    assert res.std > 0 and 0.0 <= res.mean <= 1.0
    d = res.to_dict()
    assert set(d) >= {"test_accuracy_mean", "test_accuracy_std", "n_models", "learner"}
    assert d["n_models"] == 3


def test_learned_lr_overrides_default_and_nan_uses_default():
    train, test, model, cfg = _setup()
    learner = network_learner(model, cfg, lr=0.01)
    x, y = train.x[:30], train.one_hot()[:30]
    a = evaluate_set(learner, jax.random.key(0), x, y, test, 2, lr=float("nan"))
    b = evaluate_set(learner, jax.random.key(0), x, y, test, 2, lr=0.01)
    c = evaluate_set(learner, jax.random.key(0), x, y, test, 2, lr=0.05)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert not np.array_equal(a.accuracies, c.accuracies)


def test_random_subset_baseline_draws_ipc_per_class_per_model(monkeypatch):
    train, test, model, cfg = _setup()
    seen = []
    learner = network_learner(model, cfg, lr=0.01)

    def spy(key, x, y, lr):
        seen.append(y.shape)
        return learner.fit(key, x, y, lr)

    res = evaluate_random_subset(learner._replace(fit=spy), jax.random.key(1), train, test, 2, 4)
    assert seen and seen[0] == (20, 10)  # traced once, vmapped over 4 subsets
    assert res.accuracies.shape == (4,)
    # subsets differ between models: accuracies are not all identical
    assert len(set(res.accuracies.tolist())) > 1


def test_full_data_uses_minibatch_recipe_and_beats_subsets():
    train, test, model, cfg = _setup()
    full_cfg = full_data_config(cfg, train.n, epochs=5)
    assert full_cfg.batch_size == 128 and full_cfg.steps == int(np.ceil(5 * train.n / 128))
    learner = network_learner(model, cfg, 0.01, full_data=full_cfg)
    full = evaluate_full_data(learner, jax.random.key(2), train, test, 2)
    sub = evaluate_random_subset(learner, jax.random.key(2), train, test, 1, 2)
    assert full.learner != learner.name and "batch 128" in full.learner
    assert full.mean > 0.85 > sub.mean


def test_eval_result_pooling_strings():
    r = EvalResult(np.array([0.5, 0.7]), "x")
    assert abs(r.mean - 0.6) < 1e-12 and abs(r.std - 0.1) < 1e-12
    assert "60.00 +- 10.00" in str(r)
