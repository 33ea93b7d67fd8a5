#!/usr/bin/env bash
# One call on a lent GPU machine: sweep the GEMM blocks' selection tiles in the 1M regime
# (bench_triton_tiles.py --wide --sel-sweep: rows' and columns' passes timed apart, every graph
# checked against the first entry's) and the fused pricer's tile on cuBLAS blocks (--topq-sweep:
# 4096 screened rows against 1M, q = 64, outputs checked bit for bit), run the gated selections'
# tests, then time match_vectors with the fastest of each (1M as gpu_check's first run,
# 16384..262144) and profile the warm 16384 screened run (cProfile's host functions, then
# torch.profiler's op tables).
# Limits 70 + 80 + 70 + 40 + 75 + 35 + 25 = 395 s; T_SWEEP=0 keeps the selection tiles in use
# (swept on 2026-11-27) and saves 80 s; T_1M_ALT=75 adds a second 1M run (ALT_1M, below). SEL_LIST
# replaces the selection sweep's entries.
NAME=gpu_sweep
source "$(dirname "$0")/gpu_stage.sh"
best() {  # best JSON WHAT KEY DEFAULT: a sweep's pick (its row "what=WHAT"), DEFAULT if none
    python3 -c "
import json, sys
rows = json.load(open(sys.argv[1]))
print(next((r[sys.argv[3]] for r in rows if r.get('what') == sys.argv[2]), sys.argv[4]))" "$@" 2>/dev/null || echo "$4"
}
start=$SECONDS
GREP="error|Error" stage build "${T_BUILD:-70}" python3 setup.py -q build_ext --inplace -j 16
GREP="what=" TAIL=14 stage sweep "${T_SWEEP:-80}" python3 bench/bench_triton_tiles.py 8192 --wide 1048576 \
    --sel-sweep --budget "$(( ${T_SWEEP:-80} - 25 ))" ${SEL_LIST:+--sel-list "$SEL_LIST"} --json "$OUT/sweep.json"
SEL=$(best "$OUT/sweep.json" "sel best" sel "32,64,2,16;32,32,2")
echo "selection tiles: $SEL" | tee "$OUT/sel.txt"
GREP="what=" TAIL=10 stage topq "${T_TOPQ:-70}" python3 bench/bench_triton_tiles.py 4096 --wide 1048576 \
    --topq-sweep --budget "$(( ${T_TOPQ:-70} - 25 ))" --json "$OUT/topq.json"
TOPQ=$(best "$OUT/topq.json" "topq best" topq "64,64,4,0,4")
echo "pricer tile: $TOPQ" | tee -a "$OUT/sel.txt"
TAIL=8 stage tests "${T_TESTS:-40}" python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_kernels.py \
    tests/test_gpu.py -k "gated or caps or minima"
cd bench
export MECHPERM_PROFILE_GEMM=1
GREP="F=|Error|error" stage match1m "${T_1M:-75}" python3 bench_match_gpu.py --sizes 1048576 --gpu-screen \
    --fused-pricing --candidates-k 32 --trace --sel "$SEL" --topq "$TOPQ" --json "$OUT/match1m.json"
# 1M again with other options (T_1M_ALT > 0; ALT_1M, default "--gated-pricer": on 2026-11-27
# one H100 gave the pricing phase 6.23 s gated against 4.04 s ungated, and ungated became the
# default). Others: e.g. "--candidates-k 64" (dearer selections, a larger graph, against fewer
# priced rows: k = 32 priced 41514 rows; 262144 at k = 64: 1312), or "--price-per-row 32" (the
# screened pricer keeps min(q, 64) a row: fewer registers against fewer pairs a priced row)
GREP="F=|Error|error" stage match1m_alt "${T_1M_ALT:-0}" python3 bench_match_gpu.py --sizes 1048576 --gpu-screen \
    --fused-pricing --candidates-k 32 ${ALT_1M:---gated-pricer} --trace --sel "$SEL" --topq "$TOPQ" \
    --json "$OUT/match1m_alt.json"
GREP="F=|Error|error" stage matchmid "${T_MID:-35}" python3 bench_match_gpu.py \
    --sizes 16384,16384,16384,65536,65536,262144 --sel "$SEL" --topq "$TOPQ" --json "$OUT/matchmid.json"
unset MECHPERM_PROFILE_GEMM
GREP="F=|Error|error" stage profile "${T_PROF:-25}" python3 bench_match_gpu.py --sizes 16384,16384,16384,16384 \
    --gpu-screen --fused-pricing --candidates-k 16 --trace --sel "$SEL" --topq "$TOPQ" --profile "$OUT/prof16384.txt" \
    --cprofile "$OUT/cprof16384.txt" --json "$OUT/prof16384.json"
cd ..
echo "total: $((SECONDS - start)) s" | tee "$OUT/total.txt"
archive
