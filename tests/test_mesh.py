"""jdd.mesh: the device mesh. Shapes that do not fit the devices, seeds or data are refused with
one clear error; with 8 host devices (a subprocess with
XLA_FLAGS=--xla_force_host_platform_device_count=8) sharded runs equal the single-device run
within float tolerance, in Python and through the CLI."""

import os
import subprocess
import sys
import textwrap

import pytest

from jdd.cli import main
from jdd.mesh import MeshError, MeshSpec, make_mesh, parse


def test_parse_accepts_the_documented_forms():
    assert parse(None) == parse("auto") == parse(" AUTO ") == MeshSpec()
    assert parse("seeds=4,data=2") == parse("4x2") == MeshSpec(4, 2)
    assert parse("data=8") == MeshSpec(None, 8)
    for bad in ("seeds=0", "4x", "chips=2", "seeds=2,seeds=2", "seeds=a", "2x2x2", "-1x2"):
        with pytest.raises(MeshError, match="expected auto, seeds=S,data=D"):
            parse(bad)


def test_shapes_that_do_not_fit_are_refused():
    devs = [object()] * 8          # the checks come before any Mesh is built
    with pytest.raises(MeshError, match="needs 16 devices; 8 available"):
        make_mesh("seeds=4,data=4", 4, devices=devs)
    with pytest.raises(MeshError, match="the 6 seeds do not split over 4 devices"):
        make_mesh("seeds=4,data=2", 6, devices=devs)
    with pytest.raises(MeshError, match="1347 training examples do not split over 2"):
        make_mesh("seeds=4,data=2", 4, 1347, devices=devs)


def test_cli_refuses_a_bad_mesh_before_loading(tmp_path, capsys, monkeypatch):
    import jdd.cli as cli
    monkeypatch.setattr(cli, "_load_data", lambda *a, **k: pytest.fail("data were loaded"))
    for mesh, msg in (("3y", "--mesh 3y: expected auto"), ("seeds=2", "needs 2 devices")):
        assert main(["distill", "--method", "kip", "--mesh", mesh, "--seeds", "2", "--out",
                     str(tmp_path / "o")]) == 2
        assert msg in capsys.readouterr().err


SCRIPT = textwrap.dedent("""
    import os, sys, json
    os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
    import jax, numpy as np
    from jdd.cli import main
    from jdd.data import load_digits
    from jdd.distill import distill, kip, unrolled
    from jdd.kernels import fc_kernel
    from jdd.mesh import make_mesh
    from jdd.models import make_model
    from jdd.train import TrainConfig
    assert len(jax.devices()) == 8
    train, _ = load_digits()
    train = train.replace(x=train.x[:1344], y=train.y[:1344])     # 1344 = 8 * 168
    keys = jax.random.split(jax.random.key(0), 4)
    out = {}
    for name, d in [("unrolled", unrolled(make_model("mlp", 10, hidden=(16,)), ipc=2,
                                          inner=TrainConfig(steps=3))),
                    ("kip", kip(fc_kernel(depth=1), ipc=2, batch_size=256))]:
        ref = distill(d, keys, train, 4, log_every=2, progress=False)
        for spec in ("seeds=4,data=2", "seeds=1,data=8"):
            mesh, _ = make_mesh(spec, 4, train.n)
            r = distill(d, keys, train, 4, log_every=2, progress=False, mesh=mesh)
            if dict(mesh.shape)["seeds"] > 1:   # each seed's set lives on its own devices
                assert r.synthetic.x.sharding.spec == jax.sharding.PartitionSpec("seeds")
            out[f"{name} {spec}"] = max(
                float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
                for a, b in zip(jax.tree.leaves(ref.synthetic), jax.tree.leaves(r.synthetic)))
    tmp = sys.argv[1]
    base = ["distill", "--method", "kip", "--ipc", "1", "--seeds", "4", "--steps", "4",
            "--no-eval", "--quiet"]
    assert main(base + ["--mesh", "seeds=4,data=1", "--out", tmp + "/a"]) == 0
    assert main(base + ["--mesh", "1x1", "--out", tmp + "/b"]) == 0
    from jdd.artifacts import load_distilled
    a, b = load_distilled(tmp + "/a"), load_distilled(tmp + "/b")
    out["cli"] = float(np.max(np.abs(a.x - b.x)))
    out["cli mesh"] = json.load(open(tmp + "/a/metrics.json"))["mesh"]
    rc = main(base + ["--mesh", "seeds=4,data=2", "--out", tmp + "/c"])
    out["cli data 1347"] = rc
    print("RESULT", json.dumps(out))
""")


def test_sharded_runs_equal_the_single_device_run(tmp_path):
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(__file__)),
           "JAX_PLATFORMS": "cpu"}
    p = subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path)], env=env,
                       capture_output=True, text=True, timeout=900)
    assert p.returncode == 0, p.stderr[-3000:]
    import json
    line = [x for x in p.stdout.splitlines() if x.startswith("RESULT ")][-1]
    got = json.loads(line[len("RESULT "):])
    for k, v in got.items():
        if k.startswith("unrolled"):
            assert v < 1e-4, (k, v)
        elif k.startswith("kip"):
            assert v < 1e-3, (k, v)             # Adam on a float32 kernel solve, 4 steps
    assert got["cli"] < 1e-4
    assert got["cli mesh"] == "seeds=4 x data=1 (4 cpu devices)"
    assert got["cli data 1347"] == 2            # 1347 digits do not split over data=2
    assert "do not split over 2 devices" in p.stderr


def _free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


#: Process 1 of the interrupted two-process run: SIGTERM to itself after its first chunk (the
#: checkpoint interval is longer), so the two processes must agree to stop at that boundary.
_SIGTERM_AFTER_FIRST_CHUNK = """
import os, signal, sys
import jdd.distill.core as core
real = core._check_finite
def check(*a, **k):
    real(*a, **k)
    if not getattr(check, "sent", False):
        check.sent = True
        os.kill(os.getpid(), signal.SIGTERM)
core._check_finite = check
# and it leaves 2 s late: process 0, which hosts the coordination service, must not exit
# before it (the others abort when the service goes away; CI saw it once as exit -6)
import time, jdd.console as console
leave = console._leave
console._leave = lambda code: (time.sleep(2), leave(code))
sys.argv = ["jdd"] + sys.argv[1:]
console.main()
"""


def _two_processes(tmp_path, name, argv, driver_of_1=None):
    """Run ``python -m jdd ARGV`` as processes 0 and 1 of a localhost job (process 1 through
    ``driver_of_1`` when given); returns ``[(returncode, stderr), ...]`` and each one's
    scratch folder (its TMPDIR and working directory)."""
    root = os.path.dirname(os.path.dirname(__file__))
    port = _free_port()
    procs, scratch = [], []
    for i in range(2):
        scratch.append(tmp_path / f"{name}-tmp{i}")
        scratch[-1].mkdir()
        env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu",
               "TMPDIR": str(scratch[-1]), "JDD_COORDINATOR": f"localhost:{port}",
               "JDD_NUM_PROCESSES": "2", "JDD_PROCESS_ID": str(i)}
        env.pop("XLA_FLAGS", None)
        head = ["-c", driver_of_1] if i == 1 and driver_of_1 else ["-m", "jdd"]
        procs.append(subprocess.Popen([sys.executable] + head + argv, env=env,
                                      cwd=str(scratch[-1]), stdout=subprocess.PIPE,
                                      stderr=subprocess.PIPE, text=True))
    outs = [p.communicate(timeout=600) for p in procs]
    return [(p.returncode, e) for p, (_, e) in zip(procs, outs)], scratch


def test_two_processes_on_localhost_only_process_0_writes_and_resume_together(tmp_path):
    import json
    import numpy as np
    from jdd.artifacts import load_distilled
    run = ["distill", "--method", "kip", "--ipc", "1", "--seeds", "2", "--steps", "8",
           "--log-every", "2", "--no-eval", "--quiet", "--mesh", "seeds=2,data=1"]
    got, scratch = _two_processes(tmp_path, "whole", run + ["--out", str(tmp_path / "multi")])
    for rc, err in got:
        assert rc == 0, err[-3000:]
    # process 1 wrote nothing (its scratch folder is empty), process 0 the run
    assert os.listdir(scratch[1]) == []
    m = json.load(open(tmp_path / "multi" / "metrics.json"))
    assert m["mesh"].startswith("seeds=2 x data=1 (2 cpu devices")
    root = os.path.dirname(os.path.dirname(__file__))
    env = {**os.environ, "PYTHONPATH": root, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    p = subprocess.run([sys.executable, "-m", "jdd"] + run[:-2] + ["--out", str(tmp_path / "single")],
                       env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stderr[-3000:]
    a, b = load_distilled(tmp_path / "multi"), load_distilled(tmp_path / "single")
    np.testing.assert_allclose(a.x, b.x, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(a.y, b.y, rtol=1e-5, atol=1e-6)

    # SIGTERM to process 1 alone after step 2 (checkpoints every 4): both processes stop at that
    # chunk boundary, write the checkpoint of step 2 together and exit 143, nothing else written
    out = tmp_path / "cut"
    got, _ = _two_processes(tmp_path, "cut", run + ["--checkpoint-every", "4", "--out", str(out)],
                            _SIGTERM_AFTER_FIRST_CHUNK)
    assert [rc for rc, _ in got] == [143, 143], [e[-2000:] for _, e in got]
    assert "interrupted: checkpoint of step 2 written" in got[0][1]
    assert not out.exists()
    assert sorted(os.listdir(tmp_path / "cut.ckpt" / "steps")) == ["2"]
    # resumed by both processes: the bytes of the uninterrupted two-process run
    got, _ = _two_processes(tmp_path, "resume", ["distill", "--resume", str(out)])
    for rc, err in got:
        assert rc == 0, err[-3000:]
    c = load_distilled(out)
    assert np.asarray(c.x).tobytes() == np.asarray(a.x).tobytes()
    assert np.asarray(c.y).tobytes() == np.asarray(a.y).tobytes()
    assert json.load(open(out / "metrics.json"))["resumed_from_step"] == 2
    assert not (tmp_path / "cut.ckpt").exists()
