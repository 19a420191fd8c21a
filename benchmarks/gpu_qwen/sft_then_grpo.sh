# One call: SFT (sft_r.sh) and, once its last checkpoint is written, GRPO from it (grpo_r.sh)
# beside the SFT evaluation (greedy only: SFT_OVERRIDES= restores the preset's verified decoding too).
# A call that runs out of time is repeated: both resume.
set -uo pipefail
SFT_OVERRIDES=${SFT_OVERRIDES-eval.decode=greedy} bash benchmarks/gpu_qwen/sft_r.sh &
S=$!
until [ -d /root/runsR/r_2000/checkpoints/step-002000 ] || ! kill -0 $S 2>/dev/null; do sleep 5; done
sleep 15  # the adapters are written just after the checkpoint
[ -d /root/runsR/r_2000/checkpoints/step-002000 ] && BEST=r_2000 ITERS=${ITERS:-50} bash benchmarks/gpu_qwen/grpo_r.sh &
G=$!
trap 'kill -TERM $S 2>/dev/null; wait $S' TERM  # sft_r.sh packs every run folder, GRPO's too
wait $S $G
(cd /root/runsR && tar czf $OUT/runsR.tgz --exclude='*.safetensors' --exclude='checkpoints' --exclude='adapters' .)
