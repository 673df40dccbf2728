#!/usr/bin/env bash
# One hour of pretraining on a 2-core CPU (configs/runs/cpu_hour.gin), then what it reaches:
# blank infilling on the built-in validation split (with the most-frequent-token baseline),
# LAMBADA and WikiText-2 (configs/runs/eval_lm.gin, ../shared/data beside the checkout), and a
# few greedy fills. Ends by printing the rows for docs/quickstart.md ("What an hour reaches").
#
#   tools/run_cpu_hour.sh [MODEL_DIR]          # default runs/cpu_hour; run it on a quiet machine
#
# A run that was stopped resumes from its last checkpoint when started again.
set -euo pipefail
cd "$(dirname "$0")/.."
MODEL_DIR=${1:-runs/cpu_hour}
# The recipe's data and shapes (keep in step with configs/runs/cpu_hour.gin).
TASK=glm_builtin_doc
SEQUENCE_LENGTH=64
mkdir -p "$MODEL_DIR"
LOG="$MODEL_DIR/cpu_hour.log"

stamp() { date -u '+%Y-%m-%d %H:%M UTC'; }
load() { cut -d' ' -f1-3 /proc/loadavg; }
echo "== $(stamp): training ($MODEL_DIR), load average $(load)" | tee -a "$LOG"
start=$(date +%s)
python -m glm_jax.train --gin_file=configs/runs/cpu_hour.gin --gin.MODEL_DIR="$MODEL_DIR" \
  2>&1 | tee -a "$LOG"
# Wall seconds of every training invocation (a resumed run adds its part).
echo $(( $(date +%s) - start )) >> "$MODEL_DIR/train_seconds.txt"
echo "== $(stamp): training done, load average $(load)" | tee -a "$LOG"

echo "== $(stamp): blank infilling on the whole validation split" | tee -a "$LOG"
python -m glm_jax.eval --gin_file=configs/runs/eval.gin --gin.CHECKPOINT="$MODEL_DIR" \
  --gin.MIXTURE_OR_TASK_NAME="$TASK" --gin.SEQUENCE_LENGTH="$SEQUENCE_LENGTH" \
  --gin.EVAL_BATCH_SIZE=32 --gin.OUTPUT_DIR="$MODEL_DIR/eval_infilling" 2>&1 | tee -a "$LOG"

echo "== $(stamp): LAMBADA and WikiText-2" | tee -a "$LOG"
# Positions beyond the training length were never trained: windows and passages stay within it.
python -m glm_jax.eval --gin_file=configs/runs/eval_lm.gin --gin.CHECKPOINT="$MODEL_DIR" \
  --gin.LAMBADA_LENGTH="$SEQUENCE_LENGTH" --gin.WIKITEXT_SEQUENCE_LENGTH="$SEQUENCE_LENGTH" \
  --gin.WIKITEXT_OVERLAP=$(( SEQUENCE_LENGTH / 4 )) --gin.OUTPUT_DIR="$MODEL_DIR/eval_lm" \
  2>&1 | tee -a "$LOG"

echo "== $(stamp): fills (greedy, then beam search as the sample fill)" | tee -a "$LOG"
cat > "$MODEL_DIR/prompts.txt" <<'EOF'
The old man looked out of the [MASK] and saw the sea.
She opened the [MASK] and went into the garden.
He put his hand into his [MASK] and took out a letter.
He shook his [MASK] and said nothing.
They sat down to [MASK] at the table.
It was a dark and stormy [MASK].
Once upon a time there lived a [gMASK]
EOF
python -m glm_jax.infer --checkpoint="$MODEL_DIR" --input_file="$MODEL_DIR/prompts.txt" \
  --max_new_tokens=24 --output_file="$MODEL_DIR/fills_greedy.txt" 2>&1 | tee -a "$LOG"
python -m glm_jax.infer --checkpoint="$MODEL_DIR" --input_file="$MODEL_DIR/prompts.txt" \
  --max_new_tokens=24 --strategy=beam --num_beams=4 --length_penalty=0.0 \
  --output_file="$MODEL_DIR/fills_beam.txt" 2>&1 | tee -a "$LOG"

echo "== $(stamp): rows for docs/quickstart.md" | tee -a "$LOG"
python - "$MODEL_DIR" <<'EOF' | tee -a "$LOG"
import json, os, sys
model_dir = sys.argv[1]
parts = [int(l) for l in open(os.path.join(model_dir, "train_seconds.txt")) if l.strip()]
seconds = sum(parts)
records = [json.loads(l) for l in open(os.path.join(model_dir, "metrics.jsonl"))]
evals = [r for r in records if "eval/loss" in r]
train = [r for r in records if "loss" in r]
infill = json.load(open(os.path.join(model_dir, "eval_infilling", "metrics.json")))
lm = json.load(open(os.path.join(model_dir, "eval_lm", "metrics.json")))
print(f"| training | {train[-1]['step']} steps in {seconds / 60:.1f} min wall "
      f"({len(parts)} invocation(s)), final train loss {train[-1]['loss']:.3f} |")
for r in evals:
  print(f"| step {r['step']} | eval/loss {r['eval/loss']:.3f}, eval/accuracy "
        f"{r['eval/accuracy']:.4f} (baseline {r.get('eval/baseline_accuracy', float('nan')):.4f}) |")
print(f"| whole validation split | loss {infill['eval/loss']:.3f}, accuracy "
      f"{infill['eval/accuracy']:.4f}, baseline {infill['eval/baseline_accuracy']:.4f} |")
for key in ("lambada/accuracy", "lambada/word_token_ppl", "lambada_uni/accuracy",
            "lambada_uni/word_token_ppl",
            "wikitext2/bi/token_ppl", "wikitext2/bi/word_ppl", "wikitext2/uni/token_ppl",
            "wikitext2/uni/word_ppl"):
  if key in lm:
    print(f"| {key} | {lm[key]:.4f} |")
for name in ("greedy", "beam"):
  for line in open(os.path.join(model_dir, f"fills_{name}.txt")):
    print(f"| fill ({name}) | {line.strip()} |")
EOF
