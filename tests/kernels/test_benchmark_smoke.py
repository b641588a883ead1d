"""benchmarks/kernels.py runs end to end at smoke size (tiny shapes, interpreted kernels), so a
GPU session does not find it broken: every part prints its rows, and the sweep checks each
launch setting's values and gradients against the XLA path."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.mark.slow  # 12 s; the slow pass of .ci/run keeps it checked
def test_every_part_runs_at_smoke_size():
    env = dict(os.environ, PYTHONPATH=str(ROOT), JAX_PLATFORMS="cpu")
    run = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "kernels.py"), "--smoke",
         "--parts", "blocks,attention,norm,normsweep,linear"],
        capture_output=True, text=True, env=env, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    out = run.stdout
    assert "best forward (16, 16, 4, 2)" in out  # the sweep's one setting passed its check
    assert "triton vs xla   relative error" in out
    assert "fwd+bwd  pallas rows=" in out and "of copy" in out
    assert "T=    64:" in out


def test_the_gpu_candidates_compute_the_same_attention(monkeypatch):
    """The table's GPU rows, interpreted: the Mosaic kernels with their own norms, and on
    XLA-normed q, k (the row that prices the norms), equal the XLA path."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    from benchmarks import kernels
    from jaxlab.kernels.norm_attention import cudnn, mosaic_gpu
    if not mosaic_gpu.available():
        pytest.skip(f"Mosaic GPU's interpreter needs jax >= 0.11, this is {jax.__version__}")
    monkeypatch.setattr(cudnn, "IMPLEMENTATION", "xla")  # cuDNN itself needs a GPU
    q, k, v = (jax.random.normal(key, (1, 70, 2, 64), jnp.bfloat16)
               for key in jax.random.split(jax.random.key(0), 3))
    scale = 1 + 0.1 * jax.random.normal(jax.random.key(1), (64,))
    candidates = kernels.attention_candidates(q, k, v, scale, "interpret", on_gpu=True)
    want = candidates["xla"](q, k, v).astype(jnp.float32)
    for name in ("xla-norm+cudnn", "mosaic", "xla-norm+mosaic"):
        got = candidates[name](q, k, v).astype(jnp.float32)
        assert float(jnp.abs(got - want).max()) < 2e-2 * float(jnp.abs(want).max()), name


def test_the_attention_table_takes_the_mosaic_sweeps_best_matching_settings():
    sys.path.insert(0, str(ROOT))
    from benchmarks import kernels
    from jaxlab.kernels.norm_attention import mosaic_backward, mosaic_gpu
    rows = [(("bwd", (64, 2, "split", False)), (300.0, 8e-3)),
            (("bwd", (64, 2, "columns", True)), (420.0, 9e-3)),
            (("bwd", (64, 2, "keys", False)), (900.0, 0.5)),       # fast but wrong: not taken
            (("bwd", (64, 3, "keys", False)), "failed: out of shared memory"),
            (("fwd", (128, 2, "plain", 2, False)), (380.0, 5e-3, 0.97)),
            (("fwd", (128, 2, "pingpong", 2, False)), (390.0, 5e-3, 1.0)),
            (("fwd", (128, 2, "pingpong", 2, True)), (395.0, 3e-2, 1.01)),  # wrong: not taken
            (("order", False), (330.0, 9e-3)),
            (("order", True), (340.0, 9e-3))]
    best = kernels.best_mosaic_settings(rows)
    assert best == {"bwd": (64, 2, "columns", True), "fwd": (128, 2, "pingpong", 2, False),
                    "order": True}
    constants = lambda: (mosaic_gpu.FORWARD_SCHEDULE, dict(mosaic_gpu.FORWARD_WARPGROUPS),
                         mosaic_gpu.EARLY_KEY_RELEASE, mosaic_gpu.HEAVIEST_FIRST,
                         dict(mosaic_backward.DQ_SHARES), mosaic_backward.PAIRED_PRODUCTS)
    before = constants()
    with kernels.mosaic_settings({"fwd": (128, 3, "overlap", 2, True),
                                  "bwd": (64, 2, "columns", True)}, 128) as tiles:
        assert tiles == dict(block_k=128, num_stages=3) and mosaic_gpu.EARLY_KEY_RELEASE
        assert mosaic_gpu.forward_schedule(2, True, 8, 8) == "overlap"
        assert mosaic_backward.dq_share(128, "rms") == "columns"
        assert mosaic_backward.PAIRED_PRODUCTS
    # four and three fields: a settings file written before EARLY_KEY_RELEASE and
    # PAIRED_PRODUCTS
    with kernels.mosaic_settings({"fwd": (64, 2, "plain", 3), "bwd": (64, 2, "split"),
                                  "order": True}, 64) as tiles:
        assert tiles == dict(block_k=64, num_stages=2) and mosaic_gpu.HEAVIEST_FIRST
        assert mosaic_gpu.forward_warpgroups(64) == 3 and not mosaic_gpu.EARLY_KEY_RELEASE
        assert mosaic_backward.dq_share(64, None) is None
        assert not mosaic_backward.PAIRED_PRODUCTS
    assert constants() == before


def test_the_mosaic_sweep_times_unproven_settings_last_and_shares_its_best(tmp_path,
                                                                          monkeypatch):
    sys.path.insert(0, str(ROOT))
    from benchmarks import kernels
    three = [("fwd", (128, 2, "overlap", 3, False))]
    new = [("fwd", (128, 2, schedule, 2, False)) for schedule in ("fenced", "overlap",
                                                                  "pingpong+overlap")]
    new += [("fwd", (128, 2, schedule, 2, True)) for schedule in ("pingpong", "overlap",
                                                                  "pingpong+overlap")]
    new += [("bwd", (64, 2, way, True)) for way in ("split", "keys")]
    for d, unproven in ((64, new + three), (128, new)):
        order = kernels.mosaic_sweep_order(d)
        assert sorted(order[-len(unproven):]) == sorted(unproven)
        assert order[0] == ("bwd", (64, 2, "split", False))
        proven = order[:-len(unproven)]
        assert [part for part, _ in proven] == ["bwd"] * 2 + ["fwd"] * 2 + ["order"] * 2
        assert [setting[2] for _, setting in proven[2:4]] == ["plain", "pingpong"]
        forward_only = kernels.mosaic_sweep_order(d, ("fwd",))
        assert forward_only == [row for row in order if row[0] == "fwd"]
    # a setting a head dim does not take is left out of its rows
    monkeypatch.setattr(kernels, "MOSAIC_BACKWARD", [(64, 2, "columns", False),
                                                     (64, 2, "alternate", False)])
    for d, way in ((64, "alternate"), (128, "columns")):
        assert [setting[2] for part, setting in kernels.mosaic_sweep_order(d)
                if part == "bwd"] == [way]
    path = str(tmp_path / "best.json")
    assert kernels.load_mosaic_settings(path) == {}
    best = {64: {"fwd": (128, 2, "overlap", 3, False), "bwd": (64, 2, "alternate", True),
                 "order": True},
            128: {"bwd": (64, 2, "split", False)}}
    kernels.save_mosaic_settings(path, best)
    assert kernels.load_mosaic_settings(path) == best


def test_the_mosaic_sweeps_forward_rows_run_interpreted_beside_the_default(monkeypatch):
    """A forward row is timed interleaved with the default forward, which must be traced with
    the default schedule even when the first row patches another in (--sweep-passes fwd)."""
    sys.path.insert(0, str(ROOT))
    import jax
    import jax.numpy as jnp
    from benchmarks import kernels
    from jaxlab.kernels.norm_attention import mosaic_gpu
    if not mosaic_gpu.available():
        pytest.skip(f"Mosaic GPU's interpreter needs jax >= 0.11, this is {jax.__version__}")
    traced = []
    schedule = mosaic_gpu.forward_schedule
    monkeypatch.setattr(mosaic_gpu, "forward_schedule",
                        lambda *a: traced.append(schedule(*a)) or traced[-1])
    monkeypatch.setattr(kernels, "MOSAIC_FORWARD", [(128, 2, "overlap", 2, True)])
    monkeypatch.setattr(kernels, "CALLS", 1)
    (row, cell), = kernels.bench_mosaic(1, 2, 128, 64, jnp.bfloat16, 1,
                                        kernel_impl="interpret", passes=("fwd",))
    # the default traced first; the row's forward after (the interpreter retraces a jitted
    # caller once more on its second call)
    assert row == ("fwd", (128, 2, "overlap", 2, True)) and traced[0] == "pingpong"
    assert set(traced[1:]) == {"overlap"}
    rate, error, speed_ratio = cell
    assert rate > 0 and error < 2e-2 and speed_ratio > 0


def test_the_example_part_times_ours_beside_jax_s_flash_attention_example(monkeypatch):
    """The `example` part's candidates: ours, in Mosaic GPU's interpreter, and cuDNN's stand-in
    (XLA on the CPU, which has no float16 product: bfloat16 here) compute the same attention.
    jax's example, which has no interpreter, lowers for an H100 with the arguments the part
    gives it, and on the CPU comes back as a failure row, not an exception."""
    sys.path.insert(0, str(ROOT))
    from unittest import mock
    import jax
    import jax.numpy as jnp
    from benchmarks import kernels
    from jaxlab.kernels import dispatch
    from jaxlab.kernels.norm_attention import cudnn, mosaic_gpu
    if not mosaic_gpu.available():
        pytest.skip(f"Mosaic GPU's interpreter needs jax >= 0.11, this is {jax.__version__}")
    from jax.experimental.pallas.ops.gpu import attention_mgpu
    monkeypatch.setattr(cudnn, "IMPLEMENTATION", "xla")
    monkeypatch.setattr(kernels, "CALLS", 1)
    rows = kernels.bench_example(1, 2, 128, 64, 1, causal=True, kernel_impl="interpret",
                                 dtype=jnp.bfloat16)
    by_name = {name: cells for name, *cells in rows}
    assert set(by_name) == {"mosaic", "cudnn", "jax example kv=256", "jax example kv=128"}
    rate, ratio, error = by_name["mosaic"]
    assert rate > 0 and ratio > 0 and error < 1e-2
    assert by_name["jax example kv=128"][0].startswith("failed: ")
    # its causal path asks the CUDA runtime's version, which a CPU-only jax does not have
    runtime = mock.Mock(cuda_runtime_get_version=mock.Mock(return_value=12090 + 10))
    x = jax.ShapeDtypeStruct((1, 512, 8, 128), jnp.float16)
    for causal in (True, False):
        example = kernels.example_candidates(causal)["jax example kv=128"]
        with mock.patch.object(attention_mgpu, "cuda_versions", runtime), \
                dispatch.target("gpu"):
            text = jax.jit(example).trace(x, x, x).lower(lowering_platforms=("cuda",)).as_text()
        assert "mosaic_gpu" in text
