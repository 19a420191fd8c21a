/* cblas_sgemm with a single row or column forwarded to cblas_sgemv.
 *
 * Preloaded before OpenBLAS by riscv_ft.runtime.use_fast_blas (Linux CPU only). MLX's CPU
 * backend calls cblas_sgemm for every float32 product, also for a matrix times one vector,
 * which is all a one-stream decoding step does. OpenBLAS before 0.3.27 (Debian 12 ships
 * 0.3.21) runs such a call through its gemm kernels, which pack the whole weight matrix:
 * SmolLM2's 49,152 x 576 output layer took 14.4 ms with one row against 5.9 ms as sgemv on
 * 2 cores (benchmarks/NOTES.md section 13). Every other call goes to OpenBLAS's own cblas_sgemm.
 * riscv_ft.runtime preloads this only after checking that the BLAS after it loads and has both
 * functions; without them it stops with one line instead of calling a null pointer.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

enum { ROW_MAJOR = 101, NO_TRANS = 111, TRANS = 112 };

typedef void (*sgemm_fn)(int, int, int, int, int, int, float, const float *, int, const float *, int,
                         float, float *, int);
typedef void (*sgemv_fn)(int, int, int, int, float, const float *, int, const float *, int, float,
                         float *, int);

static sgemm_fn next_sgemm;
static sgemv_fn next_sgemv;

/* How many calls went to sgemv: tests read it to see that the shim is in the path. */
unsigned long riscv_ft_gemv_calls;

void cblas_sgemm(int order, int trans_a, int trans_b, int m, int n, int k, float alpha,
                 const float *a, int lda, const float *b, int ldb, float beta, float *c, int ldc) {
  if (!next_sgemm) {
    next_sgemv = (sgemv_fn)dlsym(RTLD_NEXT, "cblas_sgemv");
    next_sgemm = (sgemm_fn)dlsym(RTLD_NEXT, "cblas_sgemm");
    if (!next_sgemm) {
      fputs("riscv_ft: the gemv shim found no cblas_sgemm after it (set RISCV_FT_GEMV=off)\n", stderr);
      abort();
    }
  }
  /* Real matrices: a conjugate transpose (113) is a transpose. */
  if (order == ROW_MAJOR && next_sgemv && k > 0) {
    if (n == 1) {
      /* C (m x 1, stride ldc) = op(A) (m x k) . b (k x 1); b's stride is ldb, or 1 if stored 1 x k. */
      int inc_b = trans_b == NO_TRANS ? ldb : 1;
      riscv_ft_gemv_calls++;
      if (trans_a == NO_TRANS)
        next_sgemv(ROW_MAJOR, NO_TRANS, m, k, alpha, a, lda, b, inc_b, beta, c, ldc);
      else
        next_sgemv(ROW_MAJOR, TRANS, k, m, alpha, a, lda, b, inc_b, beta, c, ldc);
      return;
    }
    if (m == 1) {
      /* C (1 x n) = a (1 x k) . op(B) (k x n), that is op(B)^T (n x k) . a. */
      int inc_a = trans_a == NO_TRANS ? 1 : lda;
      riscv_ft_gemv_calls++;
      if (trans_b != NO_TRANS)
        next_sgemv(ROW_MAJOR, NO_TRANS, n, k, alpha, b, ldb, a, inc_a, beta, c, 1);
      else
        next_sgemv(ROW_MAJOR, TRANS, k, n, alpha, b, ldb, a, inc_a, beta, c, 1);
      return;
    }
  }
  next_sgemm(order, trans_a, trans_b, m, n, k, alpha, a, lda, b, ldb, beta, c, ldc);
}
