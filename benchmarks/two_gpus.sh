#!/usr/bin/env bash
# One GPU against two (mlx.launch, NCCL) on the same global batch, then a resume across both ranks.
#   bash benchmarks/two_gpus.sh MODEL_FOLDER OUT_DIR [ITERS]      (on a machine with two NVIDIA GPUs)
# MODEL_FOLDER: any mlx_lm-loadable bf16 model (benchmarks/default_memory.py writes Mistral-7B's
# shape with random weights to /tmp/random-7b). Prints each run's validation losses, answer tokens
# per report, warm tokens/s and the resumed run's largest adapter difference, then one JSON line.
set -euo pipefail
model=$1; out=$2; iters=${3:-30}; half=$((iters / 2))
data=${RISCV_FT_SNAPSHOT:-$(dirname "$0")/../../shared/data/riscv-instruction-specification/train.jsonl}
common=(model=mistral7b "model.path=$model" model.name=two-gpus "data.path=$data" data.name=snapshot trainer.batch_size=8 "trainer.iters=$iters"
        "trainer.eval_every=$half" "trainer.save_every=$half" trainer.val_batches=16 trainer.report_every=5
        eval.enabled=false tracking.enabled=false)
launch() { python -c 'import sys; from mlx._distributed_utils.launch import main; sys.argv[0] = "mlx.launch"; main()' \
             --backend nccl -n 2 -- "$@"; }
rm -rf "$out"; mkdir -p "$out"
python -m riscv_ft.train "${common[@]}" "hydra.run.dir=$out/one"
launch python -m riscv_ft.train "${common[@]}" "hydra.run.dir=$out/two"
cp -r "$out/two/adapters" "$out/two-final-adapters"
rm -rf "$out/two/checkpoints/step-$(printf %06d "$iters")"   # resume from the middle checkpoint
launch python -m riscv_ft.train "resume=$out/two"
python - "$out" <<'PY'
import json, sys
from pathlib import Path
import mlx.core as mx
out = Path(sys.argv[1])
def history(run):
    rows = [json.loads(l) for l in (out / run / "history.jsonl").read_text().splitlines()]
    reports = [r for r in rows if "tokens_per_s" in r]
    return {"val_loss": {r["step"]: round(r["val_loss"], 5) for r in rows if "val_loss" in r},
            "answer_tokens": [int(r["answer_tokens"]) for r in reports],
            # the first report window holds the compilation of the step's shapes
            "warm_tokens_per_s": round(sum(r["tokens_per_s"] for r in reports[1:]) / max(len(reports) - 1, 1), 1),
            "warm_all_tokens_per_s": round(sum(r["all_tokens_per_s"] for r in reports[1:]) / max(len(reports) - 1, 1), 1),
            "peak_memory_gb": max(r["peak_memory_gb"] for r in reports)}
one, two = history("one"), history("two")
a = mx.load(str(out / "two-final-adapters" / "adapters.safetensors"))
b = mx.load(str(out / "two" / "adapters" / "adapters.safetensors"))
resume_diff = max(float(mx.abs(a[k] - b[k]).max()) for k in a)
last = max(one["val_loss"])
summary = {"one_gpu": one, "two_gpus": two, "val_loss_ratio": round(two["val_loss"][last] / one["val_loss"][last], 5),
           "same_answer_tokens": one["answer_tokens"] == two["answer_tokens"],
           "speedup": round(two["warm_tokens_per_s"] / one["warm_tokens_per_s"], 3), "resume_largest_difference": resume_diff,
           "run_folders": sorted(p.name for p in out.iterdir())}
print(json.dumps(summary))
PY
