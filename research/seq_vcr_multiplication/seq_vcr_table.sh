#!/usr/bin/env bash
# Rows of the Seq-VCR multiplication table, run side by side on one GPU with the same wall-clock budget each
# (scripts/train_reasoning.py --time-budget: the cosine schedule ends where the budget does). Run from the
# repository root:
#
#   research/seq_vcr_multiplication/seq_vcr_table.sh MODEL DIGITS BUDGET_S ROW...
#   rows: plain pause seqvcr seqvcr_pause seqvcr_pause_emb seqvcr_pause_bl
#   env: RESULTS_DIR (default research/seq_vcr_multiplication/results), BATCH (256 for smollm2, else 1024),
#        LR (5e-4), EXTRA (more flags, e.g. --save-final)
#
# Writes RESULTS_DIR/train_reasoning_multD_MODEL_ROW.json (the run's results.json: exact match on the 1000 test questions,
# epochs, tokens seen, tokens/s, seed, versions, the command) and RESULTS_DIR/multD_MODEL_ROW.log.
set -u
model=$1 digits=$2 budget=$3
shift 3
dest=${RESULTS_DIR:-research/seq_vcr_multiplication/results}
mkdir -p "$dest"
case $model in smollm2) batch=${BATCH:-256} ;; *) batch=${BATCH:-1024} ;; esac
common="--task multiplication --digits $digits --model $model --data-on-device --torch-compile --bf16
 --batch-size $batch --lr ${LR:-5e-4} --warmup-steps 300 --scheduler cosine --epochs 40 --time-budget $budget
 --logging-steps 200 --eval-batch-size 500 ${EXTRA:-}"
names=()
for row in "$@"; do
  case $row in
    plain) flags="--pauses 0 --no-seq-vcr" ;;
    pause) flags="--pauses 2 --no-seq-vcr" ;;
    seqvcr) flags="--pauses 0 --seq-vcr" ;;
    seqvcr_pause) flags="--pauses 2 --seq-vcr" ;;
    seqvcr_pause_emb) flags="--pauses 2 --seq-vcr --seq-vcr-layers embeddings" ;;
    seqvcr_pause_bl) flags="--pauses 2 --seq-vcr --seq-vcr-statistics batch_length" ;;
    *) echo "unknown row: $row" >&2; exit 2 ;;
  esac
  name=mult${digits}_${model//-/}_$row
  names+=("$name")
  # each row copies its results as soon as it ends: a row that overruns the command loses only itself
  # shellcheck disable=SC2086
  (python3 scripts/train_reasoning.py $common $flags --output-dir "/tmp/$name" >"$dest/$name.log" 2>&1 &&
    cp "/tmp/$name/results.json" "$dest/train_reasoning_${name}.json") &
done
wait
status=0
for name in "${names[@]}"; do
  if [ -f "$dest/train_reasoning_${name}.json" ]; then
    python3 -c "import json,sys; r=json.load(open(sys.argv[1])); print(sys.argv[2], 'EM', r['exact_match'], 'epochs', round(r['epochs'],2), 'tok/s', round(r['train_tokens_per_s']), r['seconds'], r['last_log'])" "$dest/train_reasoning_${name}.json" "$name"
  else
    echo "$name FAILED"; tail -15 "$dest/$name.log"; status=1
  fi
done
exit $status
