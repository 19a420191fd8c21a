# Qwen SFT on the GPU machine (benchmarks/gpu_qwen/README.md): experiment=qwen_coder for ITERS steps
# (2,000), evaluated at its end (greedy + verified, both sets). NAME2 (with SFT_OVERRIDES2, ITERS2)
# runs a second variant side by side. RUNS=/root/runsR; a run with metrics.json is skipped, one with a checkpoint resumes
# (also when an earlier call's SIGTERM left its python going: it waits for that first).
# The 1.5B (NOTES 18): MODEL=qwen_coder_15b QWEN_DIR=/root/qwen15 NAME=q15_2000.
set -uo pipefail
bash benchmarks/gpu_qwen/qwen_model.sh || exit 3
export PATH=/root/tools:$PATH
RUNS=/root/runsR; mkdir -p $RUNS
one() {  # NAME OVERRIDES...
  local name=$1; shift; local t=$SECONDS
  # a run left going by an earlier call (its script got SIGTERM, its python did not): wait for it
  while pgrep -f "capped.py .*$RUNS/$name( |$)" > /dev/null; do sleep 5; done
  if [ -f $RUNS/$name/metrics.json ]; then echo "$name: done already"; return; fi
  if [ -f $RUNS/$name/config.yaml ]; then
    python benchmarks/gpu_qwen/capped.py 12 resume=$RUNS/$name >> $RUNS/$name.log 2>&1
  else
    python benchmarks/gpu_qwen/capped.py 12 experiment=qwen_coder model=${MODEL:-qwen_coder_05b} model.source=hub model.path=${QWEN_DIR:-/root/qwen} model.dtype=bfloat16 \
      data.path=.gpu/data/train.jsonl tracking.offline=true tracking.experiment_name=qwen-r run_name=$name \
      eval.num_rows=-1 eval.baseline=false hydra.run.dir=$RUNS/$name "$@" > $RUNS/$name.log 2>&1
  fi
  echo "$name: exit $? after $((SECONDS - t)) s"
}
one ${NAME:-r_2000} trainer.iters=${ITERS:-2000} ${SFT_OVERRIDES:-} &
P1=$!
P2=""
if [ -n "${NAME2:-}" ]; then sleep 20; one $NAME2 trainer.iters=${ITERS2:-${ITERS:-2000}} ${SFT_OVERRIDES2:-} & P2=$!; fi
( while sleep 60; do for f in $RUNS/*.log; do echo "[$SECONDS s] $(basename $f): $(grep -E 'step|answer|held-out' $f | tail -1 | cut -c1-160)"; done; nvidia-smi --query-gpu=memory.used --format=csv,noheader; done ) &
W=$!
pack() { (cd $RUNS && tar czf $OUT/runsR.tgz --exclude='*.safetensors' --exclude='checkpoints' --exclude='adapters' .); ls -la $OUT; }
trap 'kill $W; pack; exit 124' TERM
wait $P1 $P2
kill $W
pack
