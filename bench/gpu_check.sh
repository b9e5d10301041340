#!/usr/bin/env bash
# The GPU checks as one script, for a machine with a CUDA GPU (first run: bench/results/gpu/README.md):
# the device and the doctor's plan, `pytest -m gpu`, short fp16 and NF4 + LoRA training runs with the
# memory estimate against the measured peak (bench/gpu_check.py), and the KALA / GPT-NeoX ratios of
# a training step and of monitored generation on the GPU. Each stage has its own time limit, so
# that one that hangs leaves the others their turn.
#
#   bench/gpu_check.sh OUT_DIR        (PYTHON=... to choose the interpreter; default python3)
set -u
OUT=${1:?usage: bench/gpu_check.sh OUT_DIR}
PY=${PYTHON:-python3}
mkdir -p "$OUT"
cd "$(dirname "$0")/.."
export PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 TOKENIZERS_PARALLELISM=false PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
{
  nvidia-smi --query-gpu=name,compute_cap,memory.total,driver_version --format=csv
  $PY -c "import torch, transformers, accelerate, peft, bitsandbytes, huggingface_hub as h; print('torch', torch.__version__, 'cuda', torch.version.cuda, torch.cuda.get_arch_list()); print('transformers', transformers.__version__, 'accelerate', accelerate.__version__, 'peft', peft.__version__, 'bitsandbytes', bitsandbytes.__version__, 'huggingface_hub', h.__version__)"
  timeout 30 $PY -m kala_engine.cli.main doctor
  timeout 30 $PY -m kala_engine.cli.main doctor --base pythia-1.4b
} > "$OUT/doctor.txt" 2>&1
echo "== doctor"; cat "$OUT/doctor.txt"
echo "== pytest -m gpu"
timeout "${PYTEST_LIMIT:-100}" $PY -m pytest -m gpu -q -p no:cacheprovider -o addopts="-ra --strict-markers" \
  tests/engine/train/test_trainer.py tests/engine/train/test_multi_process.py tests/engine/generate/test_cuda_generation.py > "$OUT/pytest_gpu.txt" 2>&1
echo "rc $?" >> "$OUT/pytest_gpu.txt"; tail -25 "$OUT/pytest_gpu.txt"
echo "== monitored generation / plain GPT-NeoX generate"
timeout 40 $PY bench/bench_generation.py --preset pythia-160m --device cuda --new-tokens 128 --reps 3 --json | tee "$OUT/bench_generation.json"
echo "== training step KALA / GPT-NeoX"
timeout 40 $PY bench/bench_train_step.py --preset pythia-160m --device cuda --seqs 512,2048 --reps 7 --json | tee "$OUT/bench_train_step.json"
echo "== memory: estimate against the measured peak"
timeout "${CASES_LIMIT:-250}" $PY bench/gpu_check.py --out "$OUT" --case-timeout 110 2>&1 | grep -v "Writing model\|Loading weights" | tee "$OUT/gpu_check.log"
