# python capped.py GB ARGS...: riscv_ft.train with MLX's buffer cache capped at GB (two runs side by
# side on one GPU: NOTES 14 saw the caches grow to 143 GB). A benchmark helper, not product code:
# MLX's CPU backend keeps no such cache, so the product has no setting for it yet.
import runpy, sys
import mlx.core as mx
mx.set_cache_limit(int(float(sys.argv[1]) * 2**30))
sys.argv = ["riscv_ft.train", *sys.argv[2:]]
runpy.run_module("riscv_ft.train", run_name="__main__", alter_sys=True)
