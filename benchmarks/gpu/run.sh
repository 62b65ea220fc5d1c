#!/usr/bin/env bash
# One device call: install the carried wheels, check the GPU-only code paths, then time the
# pretraining engine at BERT-base size. Results land in $OUT (log and the benchmark's JSON).
#   run(command="bash benchmarks/gpu/run.sh", carry=[".whl"], timeout_s=600)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
# 1. GPU paths against the portable one: varlen (flash) and flex vs sdpa, bf16, forward and backward.
timeout 120 python3 benchmarks/gpu/check_attention.py 2>&1 | tee "$OUT/check.log"
# 2. The engine's tests on the GPU (auto attention = varlen there): objectives, exports, resume.
timeout 120 python3 -m pytest -q -x tests/test_engine.py -k "not processes and not sigkill" -p no:cacheprovider \
    2>&1 | tail -15 | tee "$OUT/tests.log"
# 3. Where a step's time goes: wall time vs GPU-busy time and the top kernels (varlen, eager).
timeout 90 python3 benchmarks/gpu/profile_step.py --attention varlen 2>&1 | tee "$OUT/profile.log"
# 4. Throughput: BERT-base, seq 512, bf16, same card, baselines and domainlm variants.
timeout 420 python3 benchmarks/pretrain_throughput.py --preset base --seq-len 512 --batch-size 32 --steps 25 \
    --warmup 8 ${VARIANTS:+--variants $VARIANTS} 2>&1 | grep -v "steps/s" | tee "$OUT/throughput.log"
tail -1 "$OUT/throughput.log" > "$OUT/throughput.json"
