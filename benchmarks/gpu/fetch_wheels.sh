#!/usr/bin/env bash
# Wheels the lent GPU machine lacks (it has torch, transformers, tokenizers, safetensors, numpy,
# pyyaml, tqdm, scikit-learn, matplotlib, but no network): pydantic and its parts, and seqeval (pure
# Python, built into a wheel here). The MiniLM package (83 MB) is over the 64 MiB a call can carry.
# Run once here, in the repository root; `.whl/` is git-ignored and travels with `carry: [".whl"]`.
set -euo pipefail
grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl pydantic==2.14.4 pydantic_core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
python3 -m pip wheel -q --no-deps -w .whl seqeval==1.2.2
ls -la .whl
