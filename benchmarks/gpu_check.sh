#!/usr/bin/env bash
# The prepared GPU check (docs/gpu.md), sized for one H100 in well under 8 minutes:
#   1. builds recis._C if this Python cannot import it (the tests compare against the C++ path);
#   2. runs the GPU test subset: every Triton kernel compiled on the GPU against the C++ path, and a
#      model with CUDA tables under torch.compile with the CPU's graph breaks (test_gpu_dispatch.py);
#   3. runs benchmarks/embedding_step.py --device cuda: recis (Triton tables, hashing included) vs
#      nn.EmbeddingBag(sparse=True) + SGD / Adagrad / SparseAdam (and fbgemm TBE if its CUDA wheel
#      is installed), copy vs pooled-forward bandwidth, id map find/insert rates, the GPU targets;
#   4. the same at batch 65536 (recis and EmbeddingBag only);
#   5. with more than one GPU: sharded tables under torchrun, one rank per GPU (NCCL):
#      benchmarks/dist_gpu_check.py checks N ranks against one process and times the step.
# Everything lands in $OUT (or runs/gpu_check): *.txt logs, *.json results, summary.txt.
# The whole check stays within GPU_CHECK_BUDGET seconds (default 450): each step's timeout is cut
# to what is left, and a step with under 30 s left is skipped (and says so).
# Usage: bash benchmarks/gpu_check.sh     (PYTHON=... picks the interpreter)
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
DEST=${OUT:-runs/gpu_check}
BUDGET=${GPU_CHECK_BUDGET:-450}
mkdir -p "$DEST"
log() { echo "[gpu_check $(date +%H:%M:%S), ${SECONDS}s] $*" | tee -a "$DEST/summary.txt"; }
# left N: the timeout for a step that wants N seconds (0: no time left for it).
left() { local t=$(( BUDGET - SECONDS - 5 )); (( t > $1 )) && t=$1; (( t < 30 )) && t=0; echo "$t"; }

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
  t=$(left 240)
  (( t )) && MAX_JOBS=$(nproc) timeout "$t" "$PY" setup.py -q build_ext --inplace > "$DEST/build.txt" 2>&1
  log "build rc=$?"
fi

log "GPU tests (tests/test_gpu_kernels.py and test_gpu_dispatch.py: compiled kernels and torch.compile graph breaks on cuda)"
t=$(left 150); (( t )) || log "skipped: no time left"
(( t )) && timeout "$t" "$PY" -m pytest -o addopts="" -q -p no:cacheprovider tests/test_gpu_kernels.py tests/test_gpu_dispatch.py -k "cuda" \
  > "$DEST/tests.txt" 2>&1
log "tests rc=$? ($(tail -n 1 "$DEST/tests.txt" 2>/dev/null))"

log "embedding step benchmark, batch 16384"
t=$(left 180); (( t )) || log "skipped: no time left"
(( t )) && timeout "$t" "$PY" benchmarks/embedding_step.py --device cuda --batch 16384 --rows 1e6 --rounds 5 --skip-scaling \
  --json "$DEST/embedding_step_b16384.json" > "$DEST/embedding_step_b16384.txt" 2> "$DEST/embedding_step_b16384.err"
log "benchmark rc=$? ($(grep -h "GPU targets" "$DEST/embedding_step_b16384.txt" 2>/dev/null))"

log "embedding step benchmark, batch 65536 (recis vs EmbeddingBag)"
t=$(left 100); (( t )) || log "skipped: no time left"
(( t )) && timeout "$t" "$PY" benchmarks/embedding_step.py --device cuda --batch 65536 --rows 1e6 --rounds 3 --skip-scaling \
  --only recis,embbag_adagrad,embbag_sparseadam --json "$DEST/embedding_step_b65536.json" \
  > "$DEST/embedding_step_b65536.txt" 2> "$DEST/embedding_step_b65536.err"
log "benchmark rc=$? ($(grep -h "GPU targets" "$DEST/embedding_step_b65536.txt" 2>/dev/null))"
GPUS=$("$PY" -c "import torch; print(torch.cuda.device_count())" 2>/dev/null || echo 0)
if (( GPUS > 1 )); then
  log "sharded tables on $GPUS GPUs (torchrun, one rank per GPU, NCCL)"
  t=$(left 120); (( t )) || log "skipped: no time left"
  (( t )) && timeout "$t" "$PY" -m torch.distributed.run --standalone --nproc-per-node "$GPUS" \
    benchmarks/dist_gpu_check.py --json "$DEST/dist_gpu_check.json" > "$DEST/dist_gpu_check.txt" 2>&1
  log "sharded rc=$? ($(grep -h '"exact"\|"step_ms"' "$DEST/dist_gpu_check.txt" 2>/dev/null | tr -d '\n '))"
else
  log "sharded run skipped: $GPUS GPU(s), it needs at least 2"
fi
log "done; results in $DEST"
