#!/usr/bin/env bash
# One device call: install the carried wheels, check the GPU-only code paths, then time the
# pretraining engine at BERT-base size. Results land in $OUT (logs and the benchmark's JSON).
#   run(command="bash benchmarks/gpu/run.sh", carry=[".whl"], timeout_s=600)
# Prepared on a CPU (each step dry-run there at small size); its GPU timings are not yet measured,
# so the timeouts below are budgets: a step that runs over is cut and the next one still runs.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. GPU paths against the portable one: varlen (flash) and flex vs sdpa, bf16, forward and backward.
timeout 90 python3 benchmarks/gpu/check_attention.py 2>&1 | tee "$OUT/check.log"
# 2. The static-shape step: eager-static, compiled, CUDA-graph replay vs eager (losses, one graph, no
#    recompiles), and what micro_batch_size auto picks at BERT-base, seq 512.
timeout 150 python3 benchmarks/gpu/check_static_step.py 2>&1 | grep -v "steps/s" | tee "$OUT/check_static.log"
# 3. The engine's tests on the GPU (auto attention = varlen there): objectives, exports, resume, static step.
timeout 120 python3 -m pytest -q -x tests/test_engine.py tests/test_static_step.py -k "not processes and not sigkill" \
    -p no:cacheprovider 2>&1 | tail -15 | tee "$OUT/tests.log"
# 4. Where a step's time goes: the static step replayed as a CUDA graph (wall vs GPU-busy, launches).
timeout 60 python3 benchmarks/gpu/profile_step.py --attention sdpa --static --compile --compile-mode reduce-overhead \
    2>&1 | tee "$OUT/profile.log"
# 5. Throughput: BERT-base, seq 512, bf16, batch 32, baselines and domainlm variants; then each of two
#    at the largest batch that keeps peak memory under 60% of the card.
VARIANTS=${VARIANTS:-hf-packed,hf-packed-compiled,domainlm-varlen,domainlm-static-compiled,domainlm-static-graphs}
timeout 300 python3 benchmarks/pretrain_throughput.py --preset base --seq-len 512 --batch-size 32 --steps 20 \
    --warmup 6 --variants "$VARIANTS" 2>&1 | grep -v "steps/s" | tee "$OUT/throughput.log"
tail -1 "$OUT/throughput.log" > "$OUT/throughput.json"
timeout 150 python3 benchmarks/pretrain_throughput.py --preset base --seq-len 512 --batch-size 64 --steps 10 \
    --warmup 4 --variants hf-packed-compiled,domainlm-static-graphs --fill-memory 0.6 2>&1 | grep -v "steps/s" \
    | tee "$OUT/throughput_filled.log"
tail -1 "$OUT/throughput_filled.log" > "$OUT/throughput_filled.json"
# 6. The ModernBERT layout (issue 15): ModernBERT-base (22 x 768, GeGLU 1152, a 128-token window on two
#    layers of three), seq 512, bf16: stock ModernBertForMaskedLM padded and packed (and flattened with
#    flash-attention 2 where that package is installed) vs domainlm's engine (varlen with the window,
#    and the compiled static step, whose sdpa path takes the windowed document mask).
timeout 150 python3 benchmarks/pretrain_throughput.py --architecture modernbert --preset base --local-window 128 \
    --seq-len 512 --batch-size 32 --steps 12 --warmup 5 \
    --variants hf-padded,hf-packed,hf-flattened,domainlm-varlen,domainlm-static-compiled 2>&1 | grep -v "steps/s" \
    | tee "$OUT/throughput_modernbert.log"
tail -1 "$OUT/throughput_modernbert.log" > "$OUT/throughput_modernbert.json"
# 7. The compute savers (issue 16) on the GPU, bf16: growth's function preservation, SPDF masks held
#    through steps and resume, distillation losses (zero when student = teacher), curricula with
#    exact resume; whether resume stays bit-exact there is part of what this records.
timeout 120 python3 -m pytest -q tests/test_growth.py tests/test_sparse_and_distill.py tests/test_curriculum.py \
    2>&1 | tail -30 | tee "$OUT/check_compute_savers.log"
