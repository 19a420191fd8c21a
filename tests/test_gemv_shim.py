"""The one-row product shim (riscv_ft/native/gemv_shim.c), preloaded before OpenBLAS on Linux:
it is in the path of MLX's products, every BLAS form it forwards gives the float64 answer, and it
is built once, named by its source, and left out where it cannot be built or has nothing to call."""

import ctypes
import itertools
import os
import subprocess
import sys

import mlx.core as mx
import numpy as np
import pytest

from riscv_ft import runtime

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the shim is for Linux's OpenBLAS")
ROW_MAJOR, COL_MAJOR, NO_TRANS, TRANS, CONJ_TRANS = 101, 102, 111, 112, 113


@pytest.fixture(scope="module")
def shim():
    """The shim this process preloaded (conftest re-executed it through use_fast_blas)."""
    preload = os.environ.get("LD_PRELOAD", "").split(":")
    if runtime.find_openblas() not in preload:
        pytest.skip("this process was not re-executed with OpenBLAS (RISCV_FT_BLAS_SET came from outside, or no OpenBLAS)")
    built = runtime.gemv_shim()
    if built is None:
        pytest.skip("no C compiler here")
    assert preload[0] == built  # first in line, before OpenBLAS
    return ctypes.CDLL(built)


def _calls(shim) -> int:
    return ctypes.c_ulong.in_dll(shim, "riscv_ft_gemv_calls").value


def test_mlx_one_row_products_go_through_the_shim_and_give_the_float64_answer(shim):
    assert "one-row products as gemv" in runtime.blas_in_use()
    rng = np.random.default_rng(0)
    w = rng.standard_normal((49152, 64)).astype(np.float32)
    x = rng.standard_normal(64).astype(np.float32)
    W, X = mx.array(w), mx.array(x)
    want = w.astype(np.float64) @ x.astype(np.float64)
    for form in (lambda: W @ X, lambda: X[None] @ W.T, lambda: mx.addmm(mx.zeros((1, 49152)), X[None], W.T)):
        before = _calls(shim)
        got = np.array(form(), dtype=np.float64).reshape(-1)
        assert _calls(shim) == before + 1  # intercepted: one sgemv, not OpenBLAS's gemm
        assert np.abs(got - want).max() <= 1e-5 * np.abs(want).max()
    before = _calls(shim)
    mx.eval(mx.array(rng.standard_normal((3, 64)).astype(np.float32)) @ W.T)  # several rows: gemm
    assert _calls(shim) == before


def _pointer(a: np.ndarray):
    return a.ctypes.data_as(ctypes.c_void_p)


@pytest.mark.parametrize("m, n, k", [(1, 7, 5), (6, 1, 5), (1, 1, 4), (3, 4, 5), (1, 3, 0)])
def test_every_transposition_stride_alpha_and_beta_matches_float64(shim, m, n, k):
    """The shim's cblas_sgemm called directly, as any BLAS user would (MLX itself sends only
    some of these forms): row- and column-major, all three transpositions on each side, leading
    dimensions wider than the matrices, alpha and beta."""
    sgemm = shim.cblas_sgemm
    sgemm.argtypes = [ctypes.c_int] * 6 + [ctypes.c_float, ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p, ctypes.c_int,
                                           ctypes.c_float, ctypes.c_void_p, ctypes.c_int]
    rng = np.random.default_rng(m * 100 + n * 10 + k)
    wrong = []
    for order, ta, tb, (alpha, beta), pad in itertools.product((ROW_MAJOR, COL_MAJOR), (NO_TRANS, TRANS, CONJ_TRANS),
                                                              (NO_TRANS, TRANS, CONJ_TRANS), ((1.0, 0.0), (2.0, 0.5)), (0, 3)):
        op_a, op_b = rng.standard_normal((m, k)), rng.standard_normal((k, n))
        c0 = rng.standard_normal((m, n))
        want = alpha * op_a @ op_b + beta * c0
        # Row-major storage of op(X) or its transpose, with `pad` unused columns per row; column-major
        # storage is the row-major storage of the transpose.
        def store(op, transposed):
            kept = op.T if transposed else op
            kept = kept.T if order == COL_MAJOR else kept
            buffer = np.zeros((kept.shape[0], kept.shape[1] + pad), dtype=np.float32)
            buffer[:, : kept.shape[1]] = kept
            return buffer, max(buffer.shape[1], 1)
        a, lda = store(op_a, ta != NO_TRANS)
        b, ldb = store(op_b, tb != NO_TRANS)
        c, ldc = store(c0, False)
        before = _calls(shim)
        sgemm(order, ta, tb, m, n, k, alpha, _pointer(a), lda, _pointer(b), ldb, beta, _pointer(c), ldc)
        got = c[:, : c.shape[1] - pad]
        got = got.T if order == COL_MAJOR else got
        forwarded = _calls(shim) - before
        expected_forward = int(order == ROW_MAJOR and k > 0 and (m == 1 or n == 1))
        if not np.allclose(got, want, atol=1e-4) or forwarded != expected_forward:
            wrong.append((order, ta, tb, alpha, beta, pad, forwarded))
    assert not wrong, wrong


def test_the_shim_is_built_once_named_by_its_source_and_left_out_where_it_cannot_be(tmp_path, monkeypatch):
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path))
    monkeypatch.delenv("RISCV_FT_GEMV", raising=False)
    monkeypatch.delenv("CC", raising=False)
    if runtime.shutil.which("cc") is None:
        pytest.skip("no C compiler here")
    built = runtime.gemv_shim()
    assert built is not None and built.startswith(str(tmp_path / "native" / f"libgemv_shim-{os.uname().machine}-"))
    stamp = os.stat(built).st_mtime_ns
    assert runtime.gemv_shim() == built and os.stat(built).st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in (tmp_path / "native").iterdir()] == [os.path.basename(built)]  # no partial file left

    monkeypatch.setenv("RISCV_FT_GEMV", "off")
    assert runtime.gemv_shim() is None
    monkeypatch.delenv("RISCV_FT_GEMV")
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CC", "false")  # a compiler that fails: no shim, and no second try for this source
    assert runtime.gemv_shim() is None
    assert [p.suffix for p in (tmp_path / "other" / "native").iterdir()] == [".failed"]
    monkeypatch.setenv("CC", "cc")
    assert runtime.gemv_shim() is None  # the failure is remembered
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path / "locked" / "cache"))
    (tmp_path / "locked").mkdir()
    (tmp_path / "locked").chmod(0o500)
    try:
        assert runtime.gemv_shim() is None or os.geteuid() == 0  # an unwritable cache: no shim, no exception
    finally:
        (tmp_path / "locked").chmod(0o700)


def test_a_blas_without_cblas_gets_no_shim_and_the_process_still_multiplies(tmp_path):
    """Preloading the shim over a library it cannot call would crash the first product."""
    fake = tmp_path / "libblas-fake.so"
    fake.write_text("not a library")
    env = {k: v for k, v in os.environ.items() if k not in ("RISCV_FT_BLAS_SET", "LD_PRELOAD")}
    env.update(RISCV_FT_BLAS=str(fake), RISCV_FT_CACHE=str(tmp_path / "cache"))
    code = ("from riscv_ft.runtime import use_fast_blas; use_fast_blas()\n"
            "import os, mlx.core as mx; print('libgemv_shim' in os.environ.get('LD_PRELOAD', ''), (mx.ones((4, 8)) @ mx.ones((8,))).tolist())")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr[-1000:]
    assert done.stdout.strip().splitlines()[-1] == "False [8.0, 8.0, 8.0, 8.0]"
