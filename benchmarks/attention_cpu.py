"""One decoding step's attention on the CPU, SmolLM2-135M's shape at batch 32 (9 query heads on 3
KV heads, 160 cache positions, float32): MLX's fallback of mx.fast.scaled_dot_product_attention
against riscv_ft.inference._grouped_attention, alternated, both compiled, with the project's BLAS
set-up (riscv_ft.runtime). Prints each round and the ratio of the medians.
    python benchmarks/attention_cpu.py
"""
import statistics
import time

from riscv_ft.runtime import use_fast_blas

use_fast_blas()

import mlx.core as mx  # noqa: E402  (after the BLAS set-up)

import riscv_ft.inference as inference  # noqa: E402

B, H, KV, L, S, D = 32, 9, 3, 1, 160, 64
CALLS, ROUNDS = 300, 5

q, k, v = (mx.random.normal(shape, key=mx.random.key(i)) for i, shape in enumerate([(B, H, L, D), (B, KV, S, D), (B, KV, S, D)]))
mask = inference._mask(mx.arange(B) % 40 + 10, mx.array(3), mx.array(120), L, S)  # the decoder's layout
fallback = mx.compile(lambda q, k, v, m: mx.fast.scaled_dot_product_attention(q, k, v, scale=0.125, mask=m))
grouped = mx.compile(lambda q, k, v, m: inference._grouped_attention(q, k, v, 0.125, m))
times = {"fallback": [], "grouped": []}
for f in (fallback, grouped):
    mx.eval(f(q, k, v, mask))
for r in range(ROUNDS):
    for name, f in (("fallback", fallback), ("grouped", grouped)):
        t = time.perf_counter()
        for _ in range(CALLS):
            mx.eval(f(q, k, v, mask))
        times[name].append((time.perf_counter() - t) / CALLS * 1e3)
        print(f"round {r}  {name:8s} {times[name][-1]:.3f} ms a call (30 calls a decoding step)", flush=True)
diff = mx.abs(fallback(q, k, v, mask) - grouped(q, k, v, mask)).max().item()
ratio = statistics.median(times["fallback"]) / statistics.median(times["grouped"])
print(f"grouped is {ratio:.2f}x the fallback's speed (medians of {ROUNDS}); largest difference {diff:.1e}")
