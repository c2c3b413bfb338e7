#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md), sized for one H100 in well under 8 minutes:
#   1. builds recis._C if this Python cannot import it (the tests compare against the C++ path);
#   2. runs the GPU test subset: every Triton kernel compiled on the GPU against the C++ path;
#   3. runs benchmarks/embedding_step.py --device cuda: recis (Triton tables, hashing included) vs
#      nn.EmbeddingBag(sparse=True) + SGD / Adagrad / SparseAdam (and fbgemm TBE if its CUDA wheel
#      is installed), copy vs pooled-forward bandwidth, id map find/insert rates, the GPU targets;
#   4. the same at batch 65536 (recis and EmbeddingBag only).
# Everything lands in $OUT (or runs/gpu_check): *.txt logs, *.json results, summary.txt.
# Usage: bash benchmarks/gpu_check.sh     (PYTHON=... picks the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${OUT:-runs/gpu_check}
mkdir -p "$DEST"
log() { echo "[gpu_check $(date +%H:%M:%S)] $*" | tee -a "$DEST/summary.txt"; }

log "environment"
{
  nvidia-smi || true
  "$PY" -c "import sys, torch, triton; print(sys.version); print('torch', torch.__version__, 'triton', triton.__version__, 'cuda', torch.version.cuda); print(torch.cuda.get_device_name())"
  "$PY" -m pip list 2>/dev/null | grep -Ei "torch|triton|fbgemm|numpy|pytest|hypothesis" || true
} > "$DEST/env.txt" 2>&1
if ! "$PY" -c "import torch; assert torch.cuda.is_available()" 2>>"$DEST/env.txt"; then
  log "no CUDA device visible to torch: nothing to check"
  exit 2
fi

if ! "$PY" -c "import recis._C" 2>/dev/null; then
  log "building recis._C"
  MAX_JOBS=$(nproc) timeout 300 "$PY" setup.py -q build_ext --inplace > "$DEST/build.txt" 2>&1
  log "build rc=$?"
fi

log "GPU tests (tests/test_gpu_kernels.py, compiled kernels on cuda)"
timeout 240 "$PY" -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu_kernels.py -k "cuda" \
  > "$DEST/tests.txt" 2>&1
log "tests rc=$? ($(tail -n 1 "$DEST/tests.txt"))"

log "embedding step benchmark, batch 16384"
timeout 240 "$PY" benchmarks/embedding_step.py --device cuda --batch 16384 --rows 1e6 --rounds 5 --skip-scaling \
  --json "$DEST/embedding_step_b16384.json" > "$DEST/embedding_step_b16384.txt" 2> "$DEST/embedding_step_b16384.err"
log "benchmark rc=$? ($(grep -h "GPU targets" "$DEST/embedding_step_b16384.txt"))"

log "embedding step benchmark, batch 65536 (recis vs EmbeddingBag)"
timeout 120 "$PY" benchmarks/embedding_step.py --device cuda --batch 65536 --rows 1e6 --rounds 3 --skip-scaling \
  --only recis,embbag_adagrad,embbag_sparseadam --json "$DEST/embedding_step_b65536.json" \
  > "$DEST/embedding_step_b65536.txt" 2> "$DEST/embedding_step_b65536.err"
log "benchmark rc=$? ($(grep -h "GPU targets" "$DEST/embedding_step_b65536.txt"))"
log "done; results in $DEST"
