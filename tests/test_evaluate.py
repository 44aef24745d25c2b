"""Evaluation protocol: vmapped models == looped, baselines sample per class, no test leakage."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.data import load_digits
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


# ----------------------------------------------------------------------------- the protocol

def _bytes(tree):
    return [np.asarray(a).tobytes() for a in jax.tree.leaves(tree)]


def test_protocol_learner_steps_follow_the_set_size():
    import math
    from jdd.evaluate import protocol_learner
    train, _, model, _ = _setup()
    learner = protocol_learner(model, epochs=3, batch_size=8)
    key = jax.random.key(0)
    for m in (8, 30):   # 1 and ceil(30 / 8) = 4 steps per epoch
        x, y = train.x[:m], train.one_hot()[:m]
        cfg = TrainConfig(steps=3 * math.ceil(m / 8), optimizer="momentum", momentum=0.9,
                          weight_decay=5e-4, batch_size=8, schedule="step")
        want = init_and_fit(model, key, x, y, 0.01, cfg)
        assert _bytes(learner.fit(key, x, y, jnp.float32(jnp.nan))) == _bytes(want)
        # a set's learned lr overrides the default
        want_lr = init_and_fit(model, key, x, y, 0.05, cfg)
        assert _bytes(learner.fit(key, x, y, jnp.float32(0.05))) == _bytes(want_lr)
    assert learner.full_data.config["epochs"] == 3
    assert protocol_learner(model, epochs=3, full_data_epochs=7).full_data.config["epochs"] == 7


def test_protocol_learner_config_describes_the_recipe_and_is_json():
    import json
    from jdd.evaluate import protocol_learner
    _, _, model, _ = _setup()

    def flip(key, x):
        return jnp.where(jax.random.bernoulli(key, 0.5, (x.shape[0], 1, 1, 1)), x[:, :, ::-1], x)
    flip.name = "flip(per-image)"

    ln = protocol_learner(model, epochs=300, augment=flip, full_data_epochs=20)
    c = json.loads(json.dumps(ln.config))
    assert c["model"] == model.name and c["epochs"] == 300 and c["lr_default"] == 0.01
    assert (c["optimizer"], c["momentum"], c["weight_decay"], c["batch_size"], c["schedule"]) == (
        "momentum", 0.9, 5e-4, 256, "step")
    assert c["augmentation"] == "flip(per-image)" and c["full_data_epochs"] == 20
    assert "steps" not in c   # steps depend on the set size: see steps_rule
    assert "300 epochs" in ln.name and "aug flip(per-image)" in ln.name
    assert ln.full_data.config["epochs"] == 20 and "20 epochs" in ln.full_data.name
    assert protocol_learner(model, epochs=5).config["augmentation"] == "none"
    with pytest.raises(ValueError, match="epochs must be an integer >= 1"):
        protocol_learner(model, epochs=0)


def test_protocol_learner_evaluates_vmapped_with_augmentation():
    from jdd.evaluate import protocol_learner
    train, test, model, _ = _setup()

    def noise(key, x):
        return x + 0.1 * jax.random.normal(key, x.shape, x.dtype)

    learner = protocol_learner(model, epochs=4, batch_size=16, augment=noise)
    x, y = train.x[:40], train.one_hot()[:40]
    res = evaluate_set(learner, jax.random.key(0), x, y, test, n_models=3)
    nan = jnp.float32(jnp.nan)
    fit = jax.jit(learner.fit)
    keys = jax.random.split(jax.random.key(0), 3)
    looped = [float(accuracy(model, fit(k, x, y, nan), test.x, test.y)) for k in keys]
    np.testing.assert_allclose(res.accuracies, looped, atol=1e-6)
    plain = protocol_learner(model, epochs=4, batch_size=16).fit(keys[0], x, y, nan)
    assert _bytes(plain) != _bytes(fit(keys[0], x, y, nan))  # the augmentation is used
    small_full = protocol_learner(model, epochs=1, batch_size=256, augment=noise)
    full = evaluate_full_data(small_full, jax.random.key(1), train, test, 2)
    assert full.accuracies.shape == (2,) and full.learner == small_full.full_data.name


def test_network_learner_passes_augment_through():
    train, test, model, cfg = _setup()
    x, y = train.x[:30], train.one_hot()[:30]
    base = network_learner(model, cfg, 0.01)
    ident = network_learner(model, cfg, 0.01, augment=lambda k, x: x,
                            full_data=full_data_config(cfg, train.n, epochs=1))
    a = evaluate_set(base, jax.random.key(0), x, y, test, 2)
    b = evaluate_set(ident, jax.random.key(0), x, y, test, 2)
    np.testing.assert_array_equal(a.accuracies, b.accuracies)
    assert "augmentation" not in base.config and ident.config["augmentation"] == "<lambda>"
    assert ident.full_data.config["augmentation"] == "<lambda>"


def test_kernel_full_data_cap_fits_each_model_on_its_own_random_subset():
    from jdd.evaluate import kernel_learner
    from jdd.kernels import fc_kernel
    from jdd.kernels.krr import krr_predict
    train, test = load_digits()
    kfn = fc_kernel(depth=1)
    capped = kernel_learner(kfn, 1e-4, "krr", full_data_max=200)
    res = evaluate_full_data(capped, jax.random.key(3), train, test, 3)
    assert "at most 200" in res.learner
    looped = []
    for k in jax.random.split(jax.random.key(3), 3):
        idx = jax.random.choice(k, train.n, (200,), replace=False)
        pred = krr_predict(kfn, train.x[idx], jax.nn.one_hot(train.y[idx], 10), test.x, 1e-4)
        looped.append(float(jnp.mean(jnp.argmax(pred, -1) == test.y)))
    np.testing.assert_allclose(res.accuracies, looped, atol=1e-6)
    assert len(set(looped)) > 1                               # a different subset per model
    # at or above the training-set size the cap changes nothing: exact KRR on all of it
    whole = evaluate_full_data(kernel_learner(kfn, 1e-4), jax.random.key(3), train, test, 1)
    at_cap = evaluate_full_data(kernel_learner(kfn, 1e-4, full_data_max=train.n),
                                jax.random.key(3), train, test, 1)
    assert whole.accuracies.tolist() == at_cap.accuracies.tolist()
    assert whole.mean > max(looped)
    for bad in (0, -5, 2.5, True):
        with pytest.raises(ValueError, match="full_data_max"):
            kernel_learner(kfn, full_data_max=bad)
