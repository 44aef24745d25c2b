"""Expert trajectories (jdd.experts) and trajectory matching with TESLA (jdd.distill.mtt)."""

import argparse
import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jdd.config import ConfigError
from jdd.data import Dataset
from jdd.distill import distill
from jdd.distill.mtt import (METHOD, MTTConfig, _step_batch, build, match_loss, mtt,
                             trajectory_matching)
from jdd.experts import (add_parser, cmd, expert_file, load_buffer, param_layout,
                         train_experts)
from jdd.methods import RunSpec
from jdd.models import make_model
from jdd.train import loss_fn


def _toy(n_per_class=4, k=3, seed=0):
    """(k * n_per_class) 8x8x1 images, class-dependent mean so that training makes progress."""
    rng = np.random.default_rng(seed)
    y = np.repeat(np.arange(k), n_per_class)
    x = rng.normal(size=(len(y), 8, 8, 1)) + y[:, None, None, None] * 0.5
    return Dataset.from_arrays(x.astype(np.float32), y, k, "toy/train")


def _mlp(k=3, hidden=(4,)):
    return make_model("mlp", k, hidden=hidden)


@pytest.fixture(scope="module")
def buffer_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("experts")
    # full-batch experts (one SGD step per epoch) on the toy set, 3 at once (vmapped)
    train_experts(_mlp(), _toy(), n_experts=3, epochs=4, lr=0.05, batch_size=64,
                  key=jax.random.key(0), out_dir=out, progress=False, preprocessing="none",
                  parallel=3)
    return str(out)


# ----------------------------------------------------------------------------- experts

def test_experts_written_resumed_and_loaded_lazily(buffer_dir, tmp_path):
    model, data = _mlp(), _toy()
    names = sorted(os.listdir(buffer_dir))
    assert names == ["buffer.json"] + [expert_file(i) for i in range(3)]
    man = json.load(open(os.path.join(buffer_dir, "buffer.json")))
    lay = param_layout(model, (8, 8, 1))
    assert (man["num_params"], man["epochs"], man["dataset"], man["feature_shape"],
            man["num_classes"], man["preprocessing"]) == (lay.num_params, 4, "toy", [8, 8, 1], 3,
                                                          "none")
    assert [d["shape"] for d in man["layout"]] == [list(s) for s in lay.shapes]
    assert "jdd_version" in man and man["lr"] == 0.05 and man["augmentation"] == "none"
    assert man["batch_size"] == 64

    buf = load_buffer(buffer_dir, model=model, feature_shape=(8, 8, 1), dataset="toy")
    assert buf.n_experts == 3 and buf.epochs == 4 and buf._open == {}     # nothing read yet
    traj = buf.trajectory(1)
    assert isinstance(traj, np.memmap) and traj.shape == (5, lay.num_params)
    # entry 0 is expert 1's initialisation; the parameters move every epoch
    k_init = jax.random.split(jax.random.fold_in(jax.random.key(0), 1))[0]
    init = lay.flatten(model.init(k_init, data.x[:1]))
    np.testing.assert_array_equal(traj[0], np.asarray(init))
    assert np.all(np.linalg.norm(np.diff(np.asarray(traj), axis=0), axis=1) > 0)
    np.testing.assert_array_equal(buf.gather([1, 2], [0, 3]),
                                  np.stack([traj[0], buf.trajectory(2)[3]]))

    # resume: a second call with the same settings trains nothing and rewrites no expert
    mtimes = {f: os.stat(os.path.join(buffer_dir, f)).st_mtime_ns for f in names if "expert" in f}
    train_experts(model, data, n_experts=3, epochs=4, lr=0.05, batch_size=64,
                  key=jax.random.key(0), out_dir=buffer_dir, progress=False,
                  preprocessing="none")
    assert mtimes == {f: os.stat(os.path.join(buffer_dir, f)).st_mtime_ns for f in mtimes}
    # other settings in the same folder: one clear error, nothing written
    with pytest.raises(ValueError, match="other settings.*lr"):
        train_experts(model, data, n_experts=3, epochs=4, lr=0.1, batch_size=64,
                      key=jax.random.key(0), out_dir=buffer_dir, progress=False,
                      preprocessing="none")

    # vmapped experts (parallel=3) == one at a time, and a deleted expert is retrained alone
    one = tmp_path / "one"
    train_experts(model, data, n_experts=3, epochs=4, lr=0.05, batch_size=64,
                  key=jax.random.key(0), out_dir=one, progress=False, preprocessing="none",
                  parallel=1)
    for i in range(3):
        np.testing.assert_allclose(np.load(one / expert_file(i)),
                                   np.load(os.path.join(buffer_dir, expert_file(i))),
                                   rtol=1e-5, atol=1e-6)
    os.remove(one / expert_file(1))
    before = os.stat(one / expert_file(0)).st_mtime_ns
    train_experts(model, data, n_experts=3, epochs=4, lr=0.05, batch_size=64,
                  key=jax.random.key(0), out_dir=one, progress=False, preprocessing="none")
    assert os.stat(one / expert_file(0)).st_mtime_ns == before
    np.testing.assert_allclose(np.load(one / expert_file(1)),
                               np.load(os.path.join(buffer_dir, expert_file(1))), rtol=1e-5,
                               atol=1e-6)


def test_load_buffer_clear_errors(buffer_dir, tmp_path):
    with pytest.raises(ValueError, match="no such folder"):
        load_buffer(tmp_path / "missing")
    with pytest.raises(ValueError, match="no buffer.json"):
        load_buffer(tmp_path)
    with pytest.raises(ValueError, match="parameters"):
        load_buffer(buffer_dir, model=_mlp(hidden=(5,)))
    with pytest.raises(ValueError, match="parameters"):
        load_buffer(buffer_dir, model=_mlp(k=4))
    with pytest.raises(ValueError, match="dataset 'toy', the run uses 'digits'"):
        load_buffer(buffer_dir, dataset="digits")
    with pytest.raises(ValueError, match="shape"):
        load_buffer(buffer_dir, feature_shape=(28, 28, 1))
    with pytest.raises(ValueError, match="needs targets up to epoch 5"):
        load_buffer(buffer_dir, expert_epochs=2, max_start_epoch=4)
    load_buffer(buffer_dir, expert_epochs=2, max_start_epoch=3)        # 3 - 1 + 2 = 4: fits
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in os.listdir(buffer_dir):
        (bad / f).write_bytes(open(os.path.join(buffer_dir, f), "rb").read())
    data = (bad / expert_file(2)).read_bytes()
    (bad / expert_file(2)).write_bytes(data[:-16])
    with pytest.raises(ValueError, match="truncated"):
        load_buffer(bad)
    (bad / expert_file(2)).write_bytes(b"not a numpy file")
    with pytest.raises(ValueError, match="corrupt"):
        load_buffer(bad)
    (bad / "buffer.json").write_text("{")
    with pytest.raises(ValueError, match="corrupt"):
        load_buffer(bad)


# ----------------------------------------------------------------------------- the loss

def test_loss_is_zero_when_the_student_reproduces_the_expert(buffer_dir):
    # the fixture's "experts" trained full-batch on this very set, one step per epoch, without
    # augmentation: a student with the same lr and N = M steps lands exactly on the target
    # (TESLA's forward pass; its loss equals the unrolled one, see the gradient test)
    model, data = _mlp(), _toy()
    d = mtt(model, load_buffer(buffer_dir), ipc=4, syn_steps=2, expert_epochs=2,
            max_start_epoch=3, lr_init=0.05, memory="tesla", lr_img=1.0)
    s = d.init(jax.random.key(0), data)
    m = jax.jit(jax.vmap(lambda k: d.step(s, k, data)[1]))(jax.random.split(jax.random.key(1), 4))
    assert float(jnp.max(m["loss"])) < 1e-6, m["loss"]
    assert float(jnp.min(m["start_distance"])) > 1e-3          # the experts did move
    assert set(np.asarray(m["start_epoch"]).tolist()) <= {0.0, 1.0, 2.0}


def _problem(n=6, k=3):
    model = make_model("mlp", k, hidden=(5,), activation="tanh")
    x = jax.random.normal(jax.random.key(0), (n, 4, 4, 1), jnp.float64)
    y = jax.nn.softmax(jax.random.normal(jax.random.key(1), (n, k), jnp.float64))
    lay = param_layout(model, (4, 4, 1))
    p0 = lay.flatten(model.init(jax.random.key(2), x[:1])).astype(jnp.float64)
    target = p0 + 0.3 * jax.random.normal(jax.random.key(3), p0.shape, jnp.float64)
    return model, lay, x, y, p0, target


def _color(key, x):
    """A smooth, cheap augmentation (per-image brightness and contrast)."""
    kb, kc = jax.random.split(key)
    b = jax.random.uniform(kb, (x.shape[0], 1, 1, 1), x.dtype) - 0.5
    c = jax.random.uniform(kc, (x.shape[0], 1, 1, 1), x.dtype) + 0.5
    m = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
    return (x + b - m) * c + m


def test_meta_gradients_finite_differences_and_tesla():
    """Float64, minibatches of 4 of 6 and an augmentation at every student step: the unrolled
    meta-gradient matches central finite differences (memory="checkpoint" is jdd.train.fit's
    checkpointing, tested equal to unrolling in tests/test_train.py), and TESLA's two-pass
    gradient is the unrolled one: exactly for N = 1, and for N > 1 exactly the gradient of the
    unrolled loss whose per-step gradients are taken at the student parameters held fixed (what
    TESLA computes, see jdd.distill.mtt), with the identical loss. Everything is one jitted
    program (XLA's compile time dominates on a CPU)."""
    with jax.enable_x64(True):
        model, lay, x, y, p0, target = _problem()
        key, N = jax.random.key(4), 3
        ce = loss_fn("ce")

        def loss(memory, steps):
            return lambda x, y, lr: match_loss(model, p0, target, x, y, lr, key,  # noqa: E731
                                               syn_steps=steps, batch_syn=4, memory=memory,
                                               augment=_color)[0]

        def frozen(x, y, lr):
            th = p0
            for t in range(N):
                xb, yb = _step_batch(x, y, key, t, 4, _color)
                g = jax.grad(lambda p: ce(model.apply(lay.unflatten(p), xb), yb))(
                    jax.lax.stop_gradient(th))
                th = th - lr * g
            return jnp.sum((th - target) ** 2) / jnp.sum((p0 - target) ** 2)

        # a cheaper XLA optimisation level: this test checks numbers, not speed
        @functools.partial(jax.jit, compiler_options={"xla_backend_optimization_level": 0,
                                                      "xla_llvm_disable_expensive_passes": True})
        def everything(x, y, lr, dx, dy, eps):
            def vg(f):
                return jax.value_and_grad(f, argnums=(0, 1, 2))(x, y, lr)

            f = loss("unroll", N)
            fd = jax.vmap(lambda a, b: (f(x + eps * a, y + eps * b, lr)
                                        - f(x - eps * a, y - eps * b, lr)) / (2 * eps))(dx, dy)
            fd_lr = (f(x, y, lr + eps) - f(x, y, lr - eps)) / (2 * eps)
            return {"unroll": vg(f), "tesla": vg(loss("tesla", N)), "frozen": vg(frozen),
                    "unroll1": vg(loss("unroll", 1)), "tesla1": vg(loss("tesla", 1)),
                    "fd": fd, "fd_lr": fd_lr}

        rng = np.random.default_rng(0)
        dx, dy = rng.normal(size=(2,) + x.shape), rng.normal(size=(2,) + y.shape)
        out = everything(x, y, jnp.float64(0.2), dx, dy, 1e-6)

        v_u, g_u = out["unroll"]
        for i in range(2):
            np.testing.assert_allclose(jnp.sum(g_u[0] * dx[i]) + jnp.sum(g_u[1] * dy[i]),
                                       out["fd"][i], rtol=1e-6, atol=1e-10)
        np.testing.assert_allclose(g_u[2], out["fd_lr"], rtol=1e-6, atol=1e-10)
        assert float(jnp.linalg.norm(g_u[0])) > 1e-4 and abs(float(g_u[2])) > 1e-4

        (v1, g1), (v1_t, g1_t) = out["unroll1"], out["tesla1"]
        np.testing.assert_allclose(v1_t, v1, rtol=1e-13)
        for a, b in zip(g1_t, g1):
            np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-14)

        (v_t, g_t), (v_f, g_f) = out["tesla"], out["frozen"]
        np.testing.assert_allclose(v_t, v_u, rtol=1e-13)
        np.testing.assert_allclose(v_f, v_u, rtol=1e-12)
        for a, b in zip(g_t, g_f):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-13)
        cos = jnp.vdot(g_t[0], g_u[0]) / jnp.linalg.norm(g_t[0]) / jnp.linalg.norm(g_u[0])
        assert float(cos) > 0.9


# ----------------------------------------------------------------------------- the distiller

def test_vmapped_seeds_equal_looped_and_soft_labels(buffer_dir):
    model, data = _mlp(), _toy()
    buf = load_buffer(buffer_dir)
    d = mtt(model, buf, ipc=2, syn_steps=3, expert_epochs=2, max_start_epoch=2, lr_img=10.0,
            lr_lr=1e-3, batch_syn=4, memory="tesla", soft_labels=True, augment=_color)
    keys = jax.random.split(jax.random.key(7), 2)
    both = distill(d, keys, data, 4, log_every=2, progress=False)
    for i in range(2):
        one = distill(d, keys[i], data, 4, log_every=2, progress=False)
        np.testing.assert_allclose(both.synthetic.x[i], one.synthetic.x, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(both.synthetic.lr[i], one.synthetic.lr, rtol=1e-6)
        np.testing.assert_allclose(both.history["loss"][i], one.history["loss"], rtol=1e-5)
    syn = both.synthetic
    assert not np.allclose(syn.x[0], syn.x[1])
    assert not np.allclose(syn.lr, 0.01)                                # syn_lr was learned
    # soft labels: an expert's softmax predictions, fixed (learn_labels=False)
    np.testing.assert_allclose(np.sum(syn.y, -1), 1.0, rtol=1e-5)
    assert np.all(syn.y > 0) and np.all(syn.y < 1)
    s0 = jax.jit(d.init)(jax.random.split(keys[0])[0], data)
    np.testing.assert_allclose(jax.nn.softmax(s0.params["obj"]["label_logits"]), syn.y[0],
                               rtol=1e-5)


def test_build_and_clear_config_errors(buffer_dir, tmp_path):
    spec = RunSpec(ipc=1, steps=2, seeds=1, dataset="toy", num_classes=3,
                   feature_shape=(8, 8, 1), n_train=12)
    base = dict(model="mlp", hidden=(4,), expert_epochs=2, max_start_epoch=2, syn_steps=2,
                eval_epochs=2, eval_augment="none")
    with pytest.raises(ConfigError, match="--buffer"):
        build(MTTConfig(**base), spec)
    plan = build(MTTConfig(buffer=buffer_dir, dsa_strategy="none", **base), spec)
    assert plan.info["buffer_experts"] == 3 and plan.learner.config["epochs"] == 2
    assert METHOD.name == "mtt" and METHOD.default_steps(MTTConfig(), 1) == 500
    with pytest.raises(ConfigError, match="dataset 'toy', the run uses 'digits'"):
        build(MTTConfig(buffer=buffer_dir, **base), spec._replace(dataset="digits"))
    with pytest.raises(ConfigError, match="parameters"):
        build(MTTConfig(buffer=buffer_dir, **dict(base, hidden=(8,))), spec)
    with pytest.raises(ConfigError, match="needs targets up to epoch 6"):
        build(MTTConfig(buffer=buffer_dir, **dict(base, expert_epochs=3, max_start_epoch=4)),
              spec)
    with pytest.raises(ConfigError, match="no such folder"):
        build(MTTConfig(buffer=str(tmp_path / "nope"), **base), spec)
    with pytest.raises(ConfigError, match="--memory"):
        build(MTTConfig(buffer=buffer_dir, memory="rat", **base), spec)
    with pytest.raises(ValueError, match="syn_steps"):
        trajectory_matching(_mlp(), load_buffer(buffer_dir), syn_steps=0)
    with pytest.raises(ValueError, match="lr_img"):
        mtt(_mlp(), load_buffer(buffer_dir), ipc=1, lr_img=float("nan"), expert_epochs=1,
            max_start_epoch=1)


def test_experts_command_line(tmp_path):
    from jdd.cli import CLIError
    parser = argparse.ArgumentParser(prog="jdd")
    add_parser(parser.add_subparsers(dest="command"))
    out = tmp_path / "buf"
    argv = ["experts", "--dataset", "digits", "--model", "mlp", "--hidden", "8", "--n-experts",
            "1", "--epochs", "1", "--augment", "none", "--out", str(out), "--quiet"]
    assert cmd(parser.parse_args(argv)) == 0
    buf = load_buffer(out, dataset="digits", feature_shape=(8, 8, 1))
    assert buf.n_experts == 1 and buf.manifest["preprocessing"] == "standardize"
    assert buf.manifest["model_config"] == {"model": "mlp", "hidden": [8]}
    with pytest.raises(CLIError, match="other settings"):
        cmd(parser.parse_args(argv + ["--lr", "0.1"]))
    with pytest.raises(CLIError, match="--out"):
        cmd(parser.parse_args(argv[:-3] + ["--quiet"]))
    with pytest.raises(CLIError, match="--epochs"):
        cmd(parser.parse_args(argv + ["--epochs", "0"]))
