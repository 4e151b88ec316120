#!/usr/bin/env bash
# Every SharpZO-vs-peers benchmark in BENCHMARKS.md, in the order it was run (2026-11-24, 2 shared cores).
# The option values are in the units of that date: since the SharpZO-units change (2026-12-02) every
# step-like constant is in spreads, so today's equivalents are lr/4, sigma0/2, bound/2, SPSA a/4 and
# c/2, mu/2 (BENCHMARKS.md, "SharpZO units and estimators"), and the default model is stand-in v2.
# To replay these exact runs, check out commit 8005024 (the last before both changes).
# Run from the repository root. Finished runs are skipped, so an interrupted script can simply be started again.
# Stage by stage: `bash bench/run_benchmarks.sh select|select-sharpzo|coop|groceries|fashion-mnist|ablations|groceries-20k|fashion-mnist-20k|all`.
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
  $PY bench/whitebox.py --dataset groceries --seeds 0 1 2 --threads 1 --out $R/coop-groceries.json
  $PY bench/whitebox.py --dataset fashion-mnist --seeds 0 1 2 --threads 1 --out $R/coop-fashion-mnist.json
fi

# The embedded servers ran with one torch thread (2 shared cores; see BENCHMARKS.md "Why 1 thread").
export SHARPZO_THREADS=${SHARPZO_THREADS:-1}
SZ='sharpness="cge",switch_queries=1000,lr=100,sigma0=3.0'      # paper version (coordinate-wise sharpness)
SZES='sharpness="es",switch_queries=1000,lr=100,sigma0=3.0'     # query-efficient sharpness (ES gradient)

# 3. SharpZO against its peers: groceries, 3 seeds, 3000 queries a run.
if [[ $stage == groceries || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 --budget 3000 --eval-every 250 --budgets 1000 2000 3000 \
    --parallel 9 --config "sharpzo=sharpzo:$SZ" --config "sharpzo-es=sharpzo:$SZES" \
    --config bbt=bbt:sigma0=3.0 --config zo-sgd=zo-sgd:lr=100 --config spsa-gc=spsa-gc:a=1000 \
    --reference sharpzo-es --reach-of sharpzo --reach-of zo-sgd --whitebox $R/coop-groceries.json --out $R/compare
fi
# fashion-mnist: 1500 queries a run (compute), hyperparameters from the groceries selection, switch at a third.
if [[ $stage == fashion-mnist || $stage == all ]]; then
  $PY bench/compare.py --dataset fashion-mnist --seeds 0 1 2 --budget 1500 --eval-every 250 --budgets 500 1000 1500 \
    --parallel 12 --config 'sharpzo-es=sharpzo:sharpness="es",switch_queries=500,lr=100,sigma0=3.0' \
    --config bbt=bbt:sigma0=3.0 --config zo-sgd=zo-sgd:lr=100 --config spsa-gc=spsa-gc:a=1000 \
    --whitebox $R/coop-fashion-mnist.json --out $R/compare
fi

# 4. Ablations on groceries, seeds 0 1 2, 3000 queries, around the query-efficient SharpZO (base = the sharpzo-es runs).
#    (Run one seed at a time here: seed 0 first, then 1, then 2; the summary below covers all three.)
if [[ $stage == ablations || $stage == all ]]; then
  mkdir -p $R/ablations/groceries/base
  for s in 0 1 2; do
    [[ -e $R/ablations/groceries/base/seed$s ]] || ln -s ../../../compare/groceries/sharpzo-es/seed$s $R/ablations/groceries/base/seed$s
  done
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 --budget 3000 --eval-every 250 --budgets 1000 2000 3000 --parallel 8 \
    --config "base=sharpzo:$SZES" \
    --config "rho0=sharpzo:$SZES,rho=0" --config "rho0.01=sharpzo:$SZES,rho=0.01" --config "rho0.5=sharpzo:$SZES,rho=0.5" \
    --config "mask-magnitude=sharpzo:$SZES,mask_score=\"magnitude\"" --config "mask-dense=sharpzo:$SZES,mask_fraction=1.0" \
    --config "keep-highest=sharpzo:$SZES,mask_keep=\"highest\"" \
    --config 'auto-switch=sharpzo:sharpness="es",switch_queries=None,auto_switch=true,lr=100,sigma0=3.0' \
    --reference base --out $R/ablations
fi

# 5. groceries at 20K queries a run, all methods, 3 seeds; both SharpZO versions switch at a third of the budget.
#    Run on a quiet machine with the server on both cores (SHARPZO_THREADS=2).
if [[ $stage == groceries-20k || $stage == all ]]; then
  SHARPZO_THREADS=2 $PY bench/compare.py --dataset groceries --seeds 0 1 2 --budget 20000 --eval-every 1000 \
    --budgets 1000 5000 6667 20000 --parallel 9 \
    --config 'sharpzo=sharpzo:sharpness="cge",switch_queries=6667,lr=100,sigma0=3.0' \
    --config 'sharpzo-es=sharpzo:sharpness="es",switch_queries=6667,lr=100,sigma0=3.0' \
    --config bbt=bbt:sigma0=3.0 --config zo-sgd=zo-sgd:lr=100 --config spsa-gc=spsa-gc:a=1000 \
    --reference sharpzo --reference sharpzo-es --reach-of sharpzo --reach-of zo-sgd --whitebox $R/coop-groceries.json --out $R/compare20k
fi
# fashion-mnist at 20K queries a run, the same configs (hyperparameters from the groceries selection).
if [[ $stage == fashion-mnist-20k || $stage == all ]]; then
  SHARPZO_THREADS=2 $PY bench/compare.py --dataset fashion-mnist --seeds 0 1 2 --budget 20000 --eval-every 1000 \
    --budgets 1000 5000 6667 20000 --parallel 15 \
    --config 'sharpzo=sharpzo:sharpness="cge",switch_queries=6667,lr=100,sigma0=3.0' \
    --config 'sharpzo-es=sharpzo:sharpness="es",switch_queries=6667,lr=100,sigma0=3.0' \
    --config bbt=bbt:sigma0=3.0 --config zo-sgd=zo-sgd:lr=100 --config spsa-gc=spsa-gc:a=1000 \
    --reference sharpzo --reference sharpzo-es --reach-of sharpzo --reach-of zo-sgd --whitebox $R/coop-fashion-mnist.json --out $R/compare20k
fi
