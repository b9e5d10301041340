#!/usr/bin/env bash
# Issue 16's measurement: the real `kala demo` for each seed, then `kala eval` on the public suite
# (calibrated thresholds, benign validation-reply perplexity), with /usr/bin/time -v around each.
#   bench/issue16_seeds.sh OUT_DIR SEED [SEED ...]      (run from the checkout to measure)
# Writes OUT_DIR/sSEED/{demo.log,demo.time,eval.time,eval/report.json,eval2/report.json,...}; then
#   python bench/issue16_table.py OUT_DIR ...  summarises the seeds (mean and spread).
set -euo pipefail
out=$1; shift
py=${PYTHON:-/work/main/.venv/bin/python}
export PYTHONPATH=$PWD HF_HUB_OFFLINE=1
for seed in "$@"; do
  d=$out/s$seed
  rm -rf "$d"; mkdir -p "$d"
  /usr/bin/time -v -o "$d/demo.time" "$py" -m kala_engine.cli demo --dir "$d/demo" --seed "$seed" > "$d/demo.log" 2>&1
  /usr/bin/time -v -o "$d/eval.time" "$py" -m kala_engine.cli eval --model "$d/demo/run/final" \
      --validation "$d/demo/data.jsonl" --out "$d/eval" > "$d/eval.log" 2>&1
  # the second, blind suite (resources/eval2): issue16_table.py --eval eval2
  "$py" -m kala_engine.cli eval --model "$d/demo/run/final" --suite resources/eval2/second_suite.jsonl \
      --out "$d/eval2" > "$d/eval2.log" 2>&1
done
