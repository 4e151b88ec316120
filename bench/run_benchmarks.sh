#!/usr/bin/env bash
# Every SharpZO-vs-peers benchmark in BENCHMARKS.md, in the order it was run (2026-11-24, 2 shared cores).
# Run from the repository root. Finished runs are skipped, so an interrupted script can simply be started again.
# Stage by stage: `bash bench/run_benchmarks.sh select|select-sharpzo|coop|groceries|fashion-mnist|ablations|all`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=bench/results
stage=${1:-all}

# 1. Hyperparameters on the VALIDATION set, selection seed 100 (disjoint from evaluation seeds 0-2).
if [[ $stage == select || $stage == all ]]; then
  $PY bench/selection.py --dataset groceries --seeds 100 --budget 1500 --parallel 7 \
    --config zo-lr3=zo-sgd:lr=3 --config zo-lr10=zo-sgd:lr=10 --config zo-lr30=zo-sgd:lr=30 \
    --config zo-lr100=zo-sgd:lr=100 --config zo-lr300=zo-sgd:lr=300 \
    --config spsa-a10=spsa-gc:a=10 --config spsa-a50=spsa-gc:a=50 --config spsa-a200=spsa-gc:a=200 \
    --config spsa-a1000=spsa-gc:a=1000 --config spsa-a5000=spsa-gc:a=5000 \
    --config bbt-s0.3=bbt:sigma0=0.3 --config bbt-s1=bbt:sigma0=1.0 --config bbt-s3=bbt:sigma0=3.0 \
    --out $R/select
fi
# SharpZO: stage-2 lr from ZO-SGD's pick, CMA sigma0 from BBT's pick; switch point x2, paper (cge) and
# query-efficient (es) sharpness estimate.
if [[ $stage == select-sharpzo || $stage == all ]]; then
  $PY bench/selection.py --dataset groceries --seeds 100 --budget 3000 --parallel 4 \
    --config 'sz-cge-sw1k=sharpzo:sharpness="cge",switch_queries=1000,lr=100,sigma0=3.0' \
    --config 'sz-cge-sw2k=sharpzo:sharpness="cge",switch_queries=2000,lr=100,sigma0=3.0' \
    --config 'sz-es-sw1k=sharpzo:sharpness="es",switch_queries=1000,lr=100,sigma0=3.0' \
    --config 'sz-es-sw2k=sharpzo:sharpness="es",switch_queries=2000,lr=100,sigma0=3.0' \
    --out $R/select-sharpzo
fi

# 2. White-box CoOp (server side, backprop): the headroom above zero-shot.
if [[ $stage == coop || $stage == all ]]; then
  $PY bench/coop.py --dataset groceries --seeds 0 1 2 --threads 1 --out $R/coop-groceries.json
  $PY bench/coop.py --dataset fashion-mnist --seeds 0 1 2 --threads 1 --out $R/coop-fashion-mnist.json
fi
