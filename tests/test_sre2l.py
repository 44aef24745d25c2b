"""SRe2L with DWA (jdd.distill.sre2l, jdd.bn_models): BatchNorm statistics against direct
computations, the matching loss, DWA's step sizes and ascent, recovery lowering its loss, the
knowledge-distillation relabel hook, and a tiny run through the CLI."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jdd.bn_models import StatBatchNorm, make_bn_model
from jdd.cli import main
from jdd.data import Dataset
from jdd.distill import sre2l
from jdd.distill.sre2l import (bn_matching_loss, diversity, dwa_perturb, recover,
                               recover_batch, train_teacher)


def test_stat_batchnorm_matches_a_direct_computation():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4, 4, 3)).astype(np.float32) * 2 + 1
    bn = StatBatchNorm()
    v = bn.init(jax.random.key(0), jnp.asarray(x), train=False)
    v = {"params": {"scale": jnp.asarray([1.0, 2.0, 0.5]), "bias": jnp.asarray([0.0, 1.0, -1.0])},
         "batch_stats": v["batch_stats"]}
    y, upd = bn.apply(v, jnp.asarray(x), train=True, mutable=["batch_stats", "bn_stats"])
    m = x.mean((0, 1, 2))
    var = x.var((0, 1, 2))                                   # biased, for normalising
    want = (x - m) / np.sqrt(var + 1e-5) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(np.asarray(y), want, rtol=1e-4, atol=1e-5)
    n = 6 * 4 * 4                                            # running: unbiased, momentum 0.1
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["mean"]), 0.1 * m, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(upd["batch_stats"]["var"]),
                               0.9 + 0.1 * var * n / (n - 1), rtol=1e-5)
    (sm, sv, rm, rv), = upd["bn_stats"]["stats"]
    np.testing.assert_allclose(np.asarray(sm), m, rtol=1e-5)
    np.testing.assert_allclose(np.asarray(sv), var, rtol=1e-5)
    np.testing.assert_array_equal(np.asarray(rm), 0.0)
    # evaluation mode normalises by the running statistics
    v2 = {"params": v["params"], "batch_stats": upd["batch_stats"]}
    y2 = bn.apply(v2, jnp.asarray(x), train=False, mutable=["bn_stats"])[0]
    rmean, rvar = np.asarray(upd["batch_stats"]["mean"]), np.asarray(upd["batch_stats"]["var"])
    want2 = (x - rmean) / np.sqrt(rvar + 1e-5) * [1.0, 2.0, 0.5] + [0.0, 1.0, -1.0]
    np.testing.assert_allclose(np.asarray(y2), want2, rtol=1e-4, atol=1e-5)


def test_bn_matching_loss_against_numpy():
    rng = np.random.default_rng(1)
    stats = [tuple(rng.normal(size=c) for _ in range(4)) for c in (3, 5)]
    want = sum(np.linalg.norm(m - rm) + np.linalg.norm(v - rv) for m, v, rm, rv in stats)
    got = bn_matching_loss([tuple(jnp.asarray(a) for a in s) for s in stats])
    np.testing.assert_allclose(float(got), want, rtol=1e-5)
    # through a network: zero when the batch's statistics are the running ones is not reachable,
    # but the layer count and the per-layer statistics are the model's own
    m = make_bn_model("convnet-bn", 3, width=4, depth=2)
    v = m.init(jax.random.key(0), jnp.zeros((2, 8, 8, 1)))
    _, st = m.stats(v, jnp.ones((5, 8, 8, 1)))
    assert len(st) == 2 and all(s[0].shape == (4,) for s in st)


def _toy(n_per_class=16, k=3):
    rng = np.random.default_rng(0)
    y = np.repeat(np.arange(k), n_per_class)
    x = rng.normal(size=(len(y), 8, 8, 1)).astype(np.float32) + y[:, None, None, None]
    return Dataset.from_arrays(x, y, k, "toy")


@pytest.fixture(scope="module")
def teacher():
    data = _toy()
    m = make_bn_model("convnet-bn", 3, width=8, depth=2)
    v = train_teacher(m, data, jax.random.key(0), epochs=20, lr=0.05, batch_size=16)
    return m, v, data


def test_teacher_learns_and_dwa_takes_steps_of_rho_over_k_that_ascend(teacher):
    m, v, data = teacher
    acc = np.mean(np.argmax(np.asarray(m.apply(v, data.x, False)[0]), -1) == np.asarray(data.y))
    assert acc > 0.9
    x, y = data.x[:24], data.y[:24]
    ce = lambda p: float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(  # noqa: E731
        m.apply({"params": p, "batch_stats": v["batch_stats"]}, x, False)[0], y)))
    one = dwa_perturb(m, v, x, y, rho=0.015, steps=1)
    d1 = optax.tree_utils.tree_norm(jax.tree.map(jnp.subtract, one["params"], v["params"]))
    np.testing.assert_allclose(float(d1), 0.015, rtol=1e-4)            # one step: exactly rho
    many = dwa_perturb(m, v, x, y, rho=0.015, steps=12)
    dk = float(optax.tree_utils.tree_norm(jax.tree.map(jnp.subtract, many["params"],
                                                       v["params"])))
    assert 0.5 * 0.015 < dk <= 0.015 * (1 + 1e-4)                    # 12 steps of rho / 12
    assert ce(many["params"]) > ce(v["params"])                        # it ascends the loss
    assert jax.tree.all(jax.tree.map(lambda a, b: bool(jnp.all(a == b)),
                                     many["batch_stats"], v["batch_stats"]))


def test_recovery_lowers_its_loss_and_diversity_is_the_mean_pairwise_distance(teacher):
    m, v, data = teacher
    classes = jnp.arange(3)

    def objective(x):
        logits, st = m.stats(v, x)
        return float(jnp.mean(optax.softmax_cross_entropy_with_integer_labels(logits, classes))
                     + 0.01 * bn_matching_loss(st))

    x0 = jax.random.normal(jax.random.key(4), (3, 8, 8, 1))
    x = recover_batch(m, v, jax.random.key(4), classes, (8, 8, 1), iterations=60, lr=0.1,
                      r_bn=0.01)
    assert objective(x) < 0.5 * objective(x0)
    assert np.all(np.argmax(np.asarray(m.apply(v, x, False)[0]), -1) == np.arange(3))
    xs = np.asarray(data.x[:6])
    cls = np.array([0, 0, 0, 1, 1, 2])
    e = np.asarray(m.embed(v, jnp.asarray(xs)), np.float64)
    want = np.mean([np.mean([np.linalg.norm(e[i] - e[j]) for i, j in ((0, 1), (0, 2), (1, 2))]),
                    np.linalg.norm(e[3] - e[4])])
    np.testing.assert_allclose(diversity(m, v, xs, cls, 3), want, rtol=1e-6)


def test_real_init_starts_every_batch_from_distinct_real_images_of_its_class(teacher):
    m, v, data = teacher
    # a vanishing learning rate leaves the images where they started
    x = np.asarray(recover(m, v, jax.random.key(3), data, ipc=4, iterations=1, lr=1e-12,
                           r_bn=0.01))                          # the default: init="real"
    assert x.shape == (12, 8, 8, 1)
    real, y = np.asarray(data.x).reshape(len(data.y), -1), np.asarray(data.y)
    flat = x.reshape(12, -1)
    hit = [np.flatnonzero(np.all(np.abs(real - r) < 1e-5, axis=1)) for r in flat]
    assert all(len(h) == 1 for h in hit)                        # each one real image
    idx = np.array([h[0] for h in hit])
    np.testing.assert_array_equal(y[idx], np.repeat(np.arange(3), 4))   # of its own class
    assert len(set(idx.tolist())) == 12                         # distinct across batches
    noise = np.asarray(recover(m, v, jax.random.key(3), data, ipc=4, iterations=1, lr=1e-12,
                               r_bn=0.01, init="noise"))
    assert not np.any(np.all(np.abs(real[None] - noise.reshape(12, 1, -1)) < 1e-5, axis=2))


def test_dwa_own_batch_equals_ascending_on_the_batch_starting_images(teacher):
    m, v, data = teacher
    key, kw = jax.random.key(5), dict(iterations=3, lr=0.05, r_bn=0.01)
    start = recover(m, v, key, data, ipc=2, iterations=1, lr=1e-12, r_bn=0.01)   # init images
    got = np.asarray(recover(m, v, key, data, ipc=2, dwa=True, rho=0.5, dwa_steps=3, **kw))
    classes = jnp.arange(3)
    for b, b_key in enumerate(jax.random.split(key, 2)):   # batch b holds image b of each class
        x0 = start.reshape(3, 2, 8, 8, 1)[:, b]
        moved = dwa_perturb(m, v, x0, classes, rho=0.5, steps=3)
        want = recover_batch(m, moved, b_key, classes, (8, 8, 1), x0=x0, **kw)
        np.testing.assert_allclose(got.reshape(3, 2, 8, 8, 1)[:, b], np.asarray(want),
                                   rtol=1e-4, atol=1e-5)
        plain = recover_batch(m, v, b_key, classes, (8, 8, 1), x0=x0, **kw)
        assert np.max(np.abs(np.asarray(want) - np.asarray(plain))) > 1e-4   # DWA moved it


@pytest.mark.parametrize("dwa_batch, rows", [(None, 3), (20, 20)])
def test_dwa_ascends_on_the_batch_own_images_or_a_random_real_batch(teacher, monkeypatch,
                                                                    dwa_batch, rows):
    m, v, data = teacher
    seen = []

    def spy(model, variables, x, y, *, rho, steps):
        seen.append((x.shape, y.shape))
        return dwa_perturb(model, variables, x, y, rho=rho, steps=steps)

    monkeypatch.setattr(sre2l, "dwa_perturb", spy)
    recover(m, v, jax.random.key(3), data, ipc=2, iterations=2, lr=0.01, r_bn=0.01, dwa=True,
            dwa_batch=dwa_batch, init="real")
    assert seen and all(s == ((rows, 8, 8, 1), (rows,)) for s in seen)


def test_fit_relabel_replaces_the_targets():
    from jdd.models import make_model
    from jdd.train import TrainConfig, init_and_fit
    net = make_model("mlp", 3, hidden=(8,))
    x = jax.random.normal(jax.random.key(0), (12, 4))
    y = jax.nn.one_hot(jnp.arange(12) % 3, 3)
    always_2 = lambda xb: jax.nn.one_hot(jnp.full(xb.shape[0], 2), 3)  # noqa: E731
    p = init_and_fit(net, jax.random.key(1), x, y, 0.5, TrainConfig(steps=60, optimizer="sgd"),
                     relabel=always_2)
    assert np.all(np.argmax(np.asarray(net.apply(p, x)), -1) == 2)


def test_cli_sre2l_with_dwa_reports_kd_hard_labels_and_diversity(tmp_path):
    out = tmp_path / "s"
    assert main(["distill", "--method", "sre2l", "--ipc", "2", "--steps", "5", "--teacher-epochs",
                 "1", "--teacher-width", "8", "--eval-width", "8", "--eval-depth", "1",
                 "--eval-epochs", "2", "--full-data-epochs", "1", "--n-models", "1", "--dwa",
                 "--out", str(out), "--quiet"]) == 0
    m = json.loads((out / "metrics.json").read_text())
    assert "labels from teacher convnet-bn" in m["result"]["learner"]
    assert "labels from" in m["baselines"]["random_subset"]["learner"]
    hard = m["alt_results"]["hard labels"]
    assert "labels from" not in hard["result"]["learner"] and hard["baselines"]["random_subset"]
    assert m["sre2l"]["diversity"] > 0 and m["config"]["dwa"] is True
    assert m["images_per_class"] == 2


@pytest.mark.parametrize("argv, msg", [
    (["--rho", "0"], "--rho: expected"),
    (["--teacher", "vgg"], "--teacher: expected one of"),
    (["--dwa-steps", "0"], "--dwa-steps"),
    (["--dwa-batch", "0"], "--dwa-batch"),
    (["--init", "pixels"], "--init: expected one of"),
    (["--init", "real", "--ipc", "500"], "has only"),
    (["--init", "noise", "--dwa", "--ipc", "500"], "has only"),
])
def test_bad_sre2l_options(argv, msg, tmp_path, capsys):
    assert main(["distill", "--method", "sre2l", *argv, "--out", str(tmp_path / "o")]) == 2
    assert msg in capsys.readouterr().err
