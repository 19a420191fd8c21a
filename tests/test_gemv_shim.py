"""The one-row product shim (riscv_ft/native/gemv_shim.c), preloaded before OpenBLAS on Linux:
every matrix-vector form MLX sends to cblas_sgemm gives the float64 answer, and the shim is
built once, named by its source, and left out where it cannot be built."""

import os
import sys

import mlx.core as mx
import numpy as np
import pytest

from riscv_ft import runtime

pytestmark = pytest.mark.skipif(sys.platform != "linux", reason="the shim is for Linux's OpenBLAS")


def _close(got: mx.array, want: np.ndarray) -> bool:
    got = np.array(got, dtype=np.float64).reshape(want.shape)
    return float(np.abs(got - want).max()) <= 1e-5 * max(float(np.abs(want).max()), 1.0)


def test_this_process_runs_one_row_products_through_the_shim():
    if runtime.find_openblas() is None or runtime.gemv_shim() is None:
        pytest.skip("no OpenBLAS or no C compiler here")
    assert "libgemv_shim" in os.environ.get("LD_PRELOAD", "").split(":")[0]  # first in line (conftest re-executed us)
    assert "one-row products as gemv" in runtime.blas_in_use()


@pytest.mark.parametrize("rows, inner", [(49152, 64), (37, 1536), (1, 5), (5, 1)])
def test_every_one_row_and_one_column_form_gives_the_float64_product(rows, inner):
    rng = np.random.default_rng(rows + inner)
    w = rng.standard_normal((rows, inner)).astype(np.float32)
    x = rng.standard_normal(inner).astype(np.float32)
    wide = rng.standard_normal((rows, inner + 3)).astype(np.float32)  # a slice of it has a leading dimension > inner
    w64, x64 = w.astype(np.float64), x.astype(np.float64)
    W, X, W_T = mx.array(w), mx.array(x), mx.array(np.ascontiguousarray(w.T))
    forms = {
        "W @ x": (W @ X, w64 @ x64),
        "x @ W.T (a transposed view)": (X[None] @ W.T, x64 @ w64.T),
        "x @ B, B stored (inner, rows)": (X[None] @ W_T, x64 @ w64.T),
        "B.T @ x, B stored (inner, rows)": (W_T.T @ X, w64 @ x64),
        "W @ column (inner, 1)": (W @ X[:, None], (w64 @ x64)[:, None]),
        "row (1, inner) @ column": (X[None] @ X[:, None], np.array([[x64 @ x64]])),
        "a slice with a wider row stride": (mx.array(wide)[:, 1 : inner + 1] @ X, wide[:, 1 : inner + 1].astype(np.float64) @ x64),
        "batched, one row each": (mx.stack([X, 2 * X])[:, None] @ W.T, np.stack([x64, 2 * x64])[:, None] @ w64.T),
        "addmm (beta = 1, alpha = 2)": (mx.addmm(mx.ones((1, rows)), X[None], W.T, alpha=2.0, beta=1.0), 1 + 2 * (x64 @ w64.T)[None]),
    }
    wrong = [name for name, (got, want) in forms.items() if not _close(got, want)]
    assert not wrong, wrong
    # Several rows stay a gemm, still right.
    several = rng.standard_normal((3, inner)).astype(np.float32)
    assert _close(mx.array(several) @ W.T, several.astype(np.float64) @ w64.T)


def test_the_shim_is_built_once_named_by_its_source_and_left_out_where_it_cannot_be(tmp_path, monkeypatch):
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path))
    monkeypatch.delenv("RISCV_FT_GEMV", raising=False)
    monkeypatch.delenv("CC", raising=False)
    if runtime.shutil.which("cc") is None:
        pytest.skip("no C compiler here")
    built = runtime.gemv_shim()
    assert built is not None and built.startswith(str(tmp_path / "native" / "libgemv_shim-"))
    stamp = os.stat(built).st_mtime_ns
    assert runtime.gemv_shim() == built and os.stat(built).st_mtime_ns == stamp  # cached, not rebuilt
    assert [p.name for p in (tmp_path / "native").iterdir()] == [os.path.basename(built)]  # no partial file left

    monkeypatch.setenv("RISCV_FT_GEMV", "off")
    assert runtime.gemv_shim() is None
    monkeypatch.delenv("RISCV_FT_GEMV")
    monkeypatch.setenv("RISCV_FT_CACHE", str(tmp_path / "other"))
    monkeypatch.setenv("CC", "false")  # a compiler that fails: no shim, nothing half-written
    assert runtime.gemv_shim() is None
    assert not any((tmp_path / "other" / "native").iterdir())
