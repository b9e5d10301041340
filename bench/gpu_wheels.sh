#!/usr/bin/env bash
# Wheels for a GPU machine that has torch but not this project's pinned libraries, and no network
# (the device machine of bench/results/gpu/README.md): the versions of this checkout's .venv,
# cut to fit a 64 MiB transfer. bitsandbytes keeps its CPU and CUDA 13.0 libraries only (set
# BNB_CUDA=128 etc. for another CUDA), transformers only the model folders its own code names.
#
#   bench/gpu_wheels.sh [DIR]      (default .whl; add DIR to .git/info/exclude)
# Then, on the machine: python3 -c "import zipfile,glob;[zipfile.ZipFile(w).extractall('/tmp/site')
#   for w in glob.glob('.whl/*.whl')]" && export PYTHONPATH=/tmp/site
set -euo pipefail
cd "$(dirname "$0")/.."
DIR=${1:-.whl}
BNB_CUDA=${BNB_CUDA:-130}
PIP=".venv/bin/python -m pip"
mkdir -p "$DIR"
ver() { .venv/bin/python -c "import importlib.metadata as m; print(m.version('$1'))"; }
for p in transformers huggingface_hub peft bitsandbytes platformdirs httpx2 httpcore2 truststore idna click; do
  $PIP download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 -d "$DIR" "$p==$(ver "$p")"
done
slim() {  # slim WHEEL: unpack, let the function given as $2 delete files, zip again
  local tmp whl; tmp=$(mktemp -d); whl=$(realpath "$1")
  (cd "$tmp" && unzip -q "$whl" && "$2")
  rm "$whl" && (cd "$tmp" && zip -qr -9 "$whl" .) && rm -rf "$tmp"
}
bnb_libs() { find bitsandbytes -name 'libbitsandbytes_*.so' ! -name 'libbitsandbytes_cpu.so' \
  ! -name "libbitsandbytes_cuda${BNB_CUDA}.so" -delete; }
tf_models() {
  local keep
  keep=" $( { grep -rhoE '^\s*from \.\.([a-z_0-9]+)(\.[a-z_0-9]+)* import' transformers/models/auto \
      transformers/models/gpt_neox transformers/models/encoder_decoder | grep -oE '\.\.[a-z_0-9]+' | tr -d .;
    grep -rhoE 'transformers\.models\.[a-z_0-9]+|from \.\.models\.[a-z_0-9]+|from \.models\.[a-z_0-9]+' transformers \
      --include=*.py | grep -oE 'models\.[a-z_0-9]+' | sed 's/models\.//'; } | sort -u | tr '\n' ' ') "
  for d in transformers/models/*/; do
    case "$keep" in *" $(basename "$d") "*) ;; *) rm -rf "$d" ;; esac
  done
}
slim "$(ls "$DIR"/bitsandbytes-*.whl)" bnb_libs
slim "$(ls "$DIR"/transformers-*.whl)" tf_models
du -cb "$DIR"/*.whl | tail -1
