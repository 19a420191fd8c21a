# GRPO from the better SFT run of sft_r.sh (user-style multi-instruction functional, greedy),
# KL to the adapters it starts from, prompts: verified multi-instruction tasks only (NOTES 16: the
# training rows were 95% right already), sampled 4x over and trained on the groups whose rewards
# differ (grpo.oversample, NOTES 17). BEST=RUN_NAME picks the SFT run; ITERS=N the steps;
# OVERSAMPLE=1 is plain GRPO. MODEL and QWEN_DIR as in sft_r.sh (the 1.5B: NOTES 18).
set -uo pipefail
export PATH=/root/tools:$PATH
RUNS=/root/runsR; ITERS=${ITERS:-120}
BEST=${BEST:-$(python - <<'PY'
import json, pathlib
best = max((json.loads(p.read_text()).get("eval_user_multi_functional_rate") or 0, p.parent.name)
           for p in pathlib.Path("/root/runsR").glob("r_2*/metrics.json"))
print(best[1])
PY
)}
echo "GRPO from $BEST"
name=r_grpo
# a run left going by an earlier call (its script got SIGTERM, its python did not): wait for it
while pgrep -f "capped.py .*$RUNS/$name( |$)" > /dev/null; do sleep 5; done
if [ -f $RUNS/$name/config.yaml ] && ! ls -d $RUNS/$name/checkpoints/step-* > /dev/null 2>&1; then
  # stopped before its first checkpoint (NOTES 17: a SIGTERM mid-step, KILL 15 s later): start again
  echo "$name: no checkpoint to resume from: starting again"; rm -rf $RUNS/$name
fi
if [ -f $RUNS/$name/config.yaml ] && [ ! -f $RUNS/$name/metrics.json ]; then
  python benchmarks/gpu_qwen/capped.py 24 resume=$RUNS/$name >> $RUNS/$name.log 2>&1
elif [ ! -f $RUNS/$name/metrics.json ]; then
  python benchmarks/gpu_qwen/capped.py 24 experiment=smollm2_grpo model=${MODEL:-qwen_coder_05b} model.source=hub model.path=${QWEN_DIR:-/root/qwen} \
    model.dtype=bfloat16 data.path=.gpu/data/train.jsonl tracking.offline=true tracking.experiment_name=qwen-r run_name=$name \
    eval.num_rows=-1 eval.decode=verify eval.max_tokens=128 eval.baseline=false trainer.iters=$ITERS \
    trainer.eval_every=0 trainer.save_every=5 trainer.report_every=2 grpo.samples_every=10 \
    grpo.init_adapters=$RUNS/$BEST/adapters grpo.kl_reference=init grpo.task_prompts=3000 grpo.synthetic_prompts=0 grpo.split_prompts=false grpo.oversample=${OVERSAMPLE:-4} \
    grpo.max_tokens=96 hydra.run.dir=$RUNS/$name > $RUNS/$name.log 2>&1 &
  P=$!
  ( while sleep 45; do echo "[$SECONDS s] $(grep -E 'step|answer|held-out' $RUNS/$name.log | tail -1 | cut -c1-180)"; done ) &
  W=$!
  wait $P; echo "grpo exit $?"; kill $W
fi
cd $RUNS && tar czf $OUT/runsR.tgz --exclude='*.safetensors' --exclude='checkpoints' --exclude='adapters' . ; ls -la $OUT
