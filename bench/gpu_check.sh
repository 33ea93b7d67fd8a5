#!/usr/bin/env bash
# One call on a lent GPU machine: build the extension, run the CUDA tests, the Triton tile
# sweep, time match_vectors(), optionally the dense/sparse crossover. Each stage
# has its own time limit so the whole stays inside one call. Logs and JSON are written to a
# work folder and re-archived into $OUT/gpu_check.tgz after every stage (the device tool brings
# back at most 8 files, and a call cut off at its limit still brings back the archive so far).
# A stage whose limit is 0 is skipped; the crossover was measured on 2026-11-26 (H200).
#   TESTS=tests/test_gpu.py T_TESTS=100 T_MATCH=120 T_CROSS=0 T_TILES=0 \
#   MATCH_RUNS="--sizes 16384,65536|T=200:--sizes 65536 --dtype bfloat16" bash bench/gpu_check.sh
NAME=gpu_check
source "$(dirname "$0")/gpu_stage.sh"
start=$SECONDS
python3 setup.py -q build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $((SECONDS - start)) s"
# shellcheck disable=SC2086  # TESTS (test files) is meant to split
stage tests "${T_TESTS:-120}" python3 -m pytest -q -n 8 -p no:cacheprovider \
    ${TESTS:-tests/test_gpu.py tests/test_kernels.py tests/test_screen_cuda.py}
# Then match_vectors, the most decisive runs first (a call cut short by the device's budget
# keeps the stages it finished): 1M at candidates_k = 32 with the fused pricer (the issue's
# 30 s goal; ~19 GB of float32 vectors; the GPU screen is on from 16384² pairs; H100
# 2026-11-27: 27.4-32.3 s), untraced; 16384 at candidates_k = 16 (the 50 ms goal: 0.049-0.067 s)
# six times, the first with its compiles; the default path (16384 three times, 65536 twice,
# 262144; the second block's kernels compile in 65536's first run); the default path on
# make_stack's pair (--pair stack: heavy-tailed θ, births, splits, deaths; 5 rounds at 16384 on a
# CPU against the SAE-like pair's 2), 16384 three times and 65536, then 16384 three times with
# the auction's scans ahead on the host's threads (MECHPERM_SCAN_AHEAD=1: the same solves; a
# 2-core VM could not tell whether they pay on 16 cores); 16384 at
# candidates_k = 16 again, traced, the third of four runs under cProfile (the host's functions,
# cprof16384.txt) and the last under torch.profiler (its op tables in prof16384.txt: that run
# is host-bound). --trace logs each phase and pricing pass as it happens, and the stacks when a
# stage's limit kills it, so a run cut short still says where its time went (its synchronising
# adds to the times: trace only to find where they go). A run may start with "T=seconds:" to
# set its own limit (default T_MATCH).
# Then the kernels alone: the 1M match's selection regime at 1/128 of its cost (T_WIDE: 8192
# rows against 1M, blocks of 2048 rows; the GEMM blocks' phases ungated, gated, and gated with
# the rows' gates from every group minimum (no merged runs: CAP_GROUPS_PER_K, untimed on a GPU),
# fp32 and bf16; bench/gpu_sweep.sh sweeps the selection tiles there), and the tile stage (T_TILES, F = 16384): the cuBLAS-block selection
# (MECHPERM_GEMM_CANDIDATES) alone and gated for the first SEL_CONFIGS selection tiles (default
# 1: 32 x 64 with 2 warps, the default since session 16), the fused kernels' first TILE_CONFIGS tile shapes, running
# top-k vs thresholds and emission (MECHPERM_EMIT_TOPK), in TFLOP/s.
# Limits 60 (build) + 120 + 75 + 40 + 60 + 45 + 30 + 30 + 45 + 60 s = 565 s, inside one 600 s call
# (H100, 2026-11-27: build 52-65 s, tests 91 s (session 16; test_gpu.py and test_screen_cuda.py
# alone 61 s in session 21), the 1M run 35-44 s, the 16384 runs 8-10 s; T_WIDE=0 T_TILES=0 saves
# 105 s: 460 s).
cd bench
export MECHPERM_PROFILE_GEMM=1  # the GEMM blocks' phases (GEMM, row and column selections) in the table
IFS='|' read -ra runs <<< "${MATCH_RUNS:-T=75:--sizes 1048576 --fused-pricing --candidates-k 32|T=40:--sizes 16384,16384,16384,16384,16384,16384 --fused-pricing --candidates-k 16|T=60:--sizes 16384,16384,16384,65536,65536,262144|T=45:--sizes 16384,16384,16384,65536 --pair stack|T=30:--sizes 16384,16384,16384 --pair stack --scan-ahead|T=30:--sizes 16384,16384,16384,16384 --fused-pricing --candidates-k 16 --trace --cprofile $OUT/cprof16384.txt --profile $OUT/prof16384.txt}"
i=0
for args in "${runs[@]}"; do
    i=$((i + 1))
    limit=${T_MATCH:-150}
    if [[ $args == T=*:* ]]; then
        limit=${args%%:*}
        limit=${limit#T=}
        args=${args#*:}
    fi
    # shellcheck disable=SC2086  # the run's arguments are meant to split
    GREP="F=|Error|error" stage "match$i" "$limit" python3 bench_match_gpu.py $args --json "$OUT/match$i.json"
done
cd ..
GREP="what=" stage wide "${T_WIDE:-45}" python3 bench/bench_triton_tiles.py 8192 --wide 1048576 \
    --json "$OUT/wide.json"
GREP="what=" stage tiles "${T_TILES:-60}" python3 bench/bench_triton_tiles.py 16384 --json "$OUT/tiles.json" \
    --budget $(( ${T_TILES:-60} - 30 )) --configs "${TILE_CONFIGS:-2}" --emit --gemm --sel-configs "${SEL_CONFIGS:-1}"
cd bench
GREP="F=" stage crossover "${T_CROSS:-0}" python3 bench_match_gpu.py --crossover --json "$OUT/crossover.json"
cd ..
echo "total: $((SECONDS - start)) s" | tee "$OUT/total.txt"
archive
