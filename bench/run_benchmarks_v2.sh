#!/usr/bin/env bash
# The stage-2 sweeps and the 20K-query comparisons on stand-in v2 in BENCHMARKS.md (2026-12-03), in
# today's units (spreads) and at today's defaults. (bench/run_benchmarks.sh holds the v1 runs.)
# Run from the repository root. Finished runs are skipped, so an interrupted stage can simply be started again.
# Stage by stage: `bash bench/run_benchmarks_v2.sh select-stage2|select-rge-mu|groceries-20k|paper-20k|peers-20k|select-spsa|fashion-20k|fashion-peers-20k|ablations-sharpness|groceries-20k-rerun|spsa-selected-20k|select-bbt|all`.
set -euo pipefail
PY=${PY:-.venv/bin/python}
R=bench/results
stage=${1:-all}
export SHARPZO_THREADS=${SHARPZO_THREADS:-2}

# Stage 2 of SharpZO, and ZO-SGD's lr x mu, on the VALIDATION set: selection seeds 100 and 101, 3000 queries,
# 11 configs a method (equal selection budgets). sam_rho, lr and mu are in spreads (src/sharpzo/client/prompt.py).
if [[ $stage == select-stage2 || $stage == all ]]; then
  $PY bench/selection.py --dataset groceries --seeds 100 101 --budget 3000 --parallel 3 \
    --config sz-default=sharpzo --config sz-lr50=sharpzo:lr=50 --config sz-lr100=sharpzo:lr=100 \
    --config sz-lr200=sharpzo:lr=200 --config 'sz-lr-rescaled=sharpzo:mask_lr="rescaled"' \
    --config sz-sam.02=sharpzo:sam_rho=0.02 --config sz-sam.05=sharpzo:sam_rho=0.05 \
    --config sz-sam.15=sharpzo:sam_rho=0.15 --config sz-switch.1=sharpzo:switch_fraction=0.1 \
    --config sz-switch.5=sharpzo:switch_fraction=0.5 --config 'sz-auto=sharpzo:auto_switch=true,switch_fraction=null' \
    --config zo-default=zo-sgd --config zo-lr150=zo-sgd:lr=150 --config zo-lr200=zo-sgd:lr=200 \
    --config zo-lr300=zo-sgd:lr=300 --config zo-lr150-mu3e-2=zo-sgd:lr=150,mu=0.03 \
    --config zo-lr200-mu3e-2=zo-sgd:lr=200,mu=0.03 --config zo-lr300-mu3e-2=zo-sgd:lr=300,mu=0.03 \
    --config zo-lr100-mu3e-2=zo-sgd:lr=100,mu=0.03 --config zo-lr100-mu3e-3=zo-sgd:lr=100,mu=0.003 \
    --config zo-lr50-mu3e-2=zo-sgd:lr=50,mu=0.03 --config zo-lr200-mu3e-3=zo-sgd:lr=200,mu=0.003 \
    --out $R/select-v2-stage2
fi

# SharpZO's stage-2 probe length rge_mu (spreads; ZO-SGD's mu was swept above), with the default run again beside it.
if [[ $stage == select-rge-mu || $stage == all ]]; then
  $PY bench/selection.py --dataset groceries --seeds 100 101 --budget 3000 --parallel 3 \
    --config sz-default=sharpzo --config sz-rmu3e-3=sharpzo:rge_mu=0.003 --config sz-rmu3e-2=sharpzo:rge_mu=0.03 \
    --out $R/select-v2-rge-mu
fi

# SharpZO and ZO-SGD at their defaults, groceries, seeds 0-4, 20K queries a run.
if [[ $stage == groceries-20k || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config sharpzo=sharpzo --config zo-sgd=zo-sgd --reference sharpzo --reach-of sharpzo --reach-of zo-sgd \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-groceries-v2-sweep.json --parallel 4 --out $R/compare20k-v2
fi

# The paper's version (coordinate-wise sharpness and mask, rho 1% of the population radius: --preset sharpzo-paper)
# on the same seeds, budget and evaluation grid; BENCHMARKS.md pairs it with the runs above through both summary.json.
if [[ $stage == paper-20k || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config 'sharpzo-paper=sharpzo:sharpness="cge",rho=0.01' --reach-of sharpzo-paper \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-groceries-v2-sweep.json --parallel 5 --out $R/compare20k-v2-paper
fi

# The other peers at their defaults (BBT's sigma0 as checked on v2 validation; SPSA-GC's a and c as chosen on v1),
# the same seeds, budget and grid; paired with the runs above through the summary.json files.
if [[ $stage == peers-20k || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config bbt=bbt --config spsa-gc=spsa-gc --reach-of bbt --reach-of spsa-gc \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-groceries-v2-sweep.json --parallel 5 --out $R/compare20k-v2-peers
fi

# SPSA-GC's a (spreads²/loss) and c (spreads) on the VALIDATION set, with the selection budget the two sweeps
# above gave SharpZO and ZO-SGD: 11 configs, seeds 100 and 101, 3000 queries.
if [[ $stage == select-spsa || $stage == all ]]; then
  $PY bench/selection.py --dataset groceries --seeds 100 101 --budget 3000 --parallel 3 \
    --config spsa-default=spsa-gc --config spsa-a125=spsa-gc:a=125 --config spsa-a500=spsa-gc:a=500 \
    --config spsa-a1000=spsa-gc:a=1000 --config spsa-a125-c1e-2=spsa-gc:a=125,c=0.01 \
    --config spsa-a250-c1e-2=spsa-gc:a=250,c=0.01 --config spsa-a500-c1e-2=spsa-gc:a=500,c=0.01 \
    --config spsa-a1000-c1e-2=spsa-gc:a=1000,c=0.01 --config spsa-a250-c3e-2=spsa-gc:a=250,c=0.03 \
    --config spsa-a500-c3e-2=spsa-gc:a=500,c=0.03 --config spsa-a1000-c3e-2=spsa-gc:a=1000,c=0.03 \
    --out $R/select-v2-spsa
fi

# fashion-mnist at 20K queries a run, every method at its defaults (groceries-selected), seeds 0-4.
if [[ $stage == fashion-20k || $stage == all ]]; then
  $PY bench/compare.py --dataset fashion-mnist --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config sharpzo=sharpzo --config 'sharpzo-paper=sharpzo:sharpness="cge",rho=0.01' --config zo-sgd=zo-sgd \
    --config bbt=bbt --config spsa-gc=spsa-gc --reference sharpzo --reference sharpzo-paper \
    --reach-of sharpzo --reach-of sharpzo-paper --reach-of zo-sgd \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-fashion-mnist-v2-sweep.json --parallel 5 --out $R/compare20k-v2
fi

# The three peers on fashion-mnist at 20K (fashion-20k above finished only the two SharpZO versions in its
# session): the same seeds, budget and grid, into their own directory; pair_summaries.py pairs them with those.
if [[ $stage == fashion-peers-20k || $stage == all ]]; then
  $PY bench/compare.py --dataset fashion-mnist --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config zo-sgd=zo-sgd --config bbt=bbt --config spsa-gc=spsa-gc --reach-of zo-sgd --reach-of bbt --reach-of spsa-gc \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-fashion-mnist-v2-sweep.json --parallel 15 --out $R/compare20k-v2-peers
fi

# The sharpness that SharpZO claims to reduce, measured at the stage switch and at the end of each run (result.json,
# 17 monitor queries each) and plotted against test accuracy (sharpness.png): the defaults, each sharpness-aware part
# taken out (no shift: rho 0; no mask: dense stage 2), the paper's version, and the two peers that bracket it.
if [[ $stage == ablations-sharpness || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 3 4 --budget 3000 --eval-every 500 --budgets 1000 2000 3000 \
    --config sharpzo=sharpzo --config rho0=sharpzo:rho=0 --config mask-dense=sharpzo:mask_fraction=1.0 \
    --config 'sharpzo-paper=sharpzo:sharpness="cge",rho=0.01' --config bbt=bbt --config zo-sgd=zo-sgd \
    --reference sharpzo --whitebox $R/coop-groceries-v2-sweep.json --parallel 10 --out $R/ablations-v2
fi

# The groceries-20k pair run again into its own directory: how far a rerun of the same seeds moves (other requests
# in flight change which candidates share a batch, by an ulp or two), and every run's final sharpness beside it.
if [[ $stage == groceries-20k-rerun || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config sharpzo=sharpzo --config zo-sgd=zo-sgd --reference sharpzo --reach-of sharpzo --reach-of zo-sgd \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-groceries-v2-sweep.json --parallel 5 --out $R/compare20k-v2-rerun
fi

# SPSA-GC at the config its validation sweep chose (select-spsa; 2 points over its default there, at the edge of
# that sweep's noise), on the same seeds, budget and grid.
if [[ $stage == spsa-selected-20k || $stage == all ]]; then
  $PY bench/compare.py --dataset groceries --seeds 0 1 2 3 4 --budget 20000 --eval-every 2000 \
    --config spsa-gc-selected=spsa-gc:a=125,c=0.01 --reach-of spsa-gc-selected \
    --budgets 1000 3000 6000 10000 20000 --whitebox $R/coop-groceries-v2-sweep.json --parallel 5 --out $R/compare20k-v2-spsa-selected
fi

# BBT's sigma0 (spreads), popsize and bound on the VALIDATION set, with the same selection budget (11 configs,
# seeds 100 and 101, 3000 queries).
if [[ $stage == select-bbt || $stage == all ]]; then
  $PY bench/selection.py --dataset groceries --seeds 100 101 --budget 3000 --parallel 3 \
    --config bbt-default=bbt --config bbt-s0.5=bbt:sigma0=0.5 --config bbt-s1=bbt:sigma0=1.0 \
    --config bbt-s2=bbt:sigma0=2.0 --config bbt-s3=bbt:sigma0=3.0 --config bbt-pop20=bbt:popsize=20 \
    --config bbt-pop80=bbt:popsize=80 --config bbt-b1.5=bbt:bound=1.5 --config bbt-b5=bbt:bound=5.0 \
    --config bbt-unbounded=bbt:bound=null --config bbt-s1-pop20=bbt:sigma0=1.0,popsize=20 \
    --out $R/select-v2-bbt
fi
