#!/usr/bin/env bash
# One call on a lent GPU machine after gpu_check.sh: sweep the GEMM blocks' selection tiles in
# the 1M regime (bench_triton_tiles.py --wide --sel-sweep: rows' and columns' passes timed
# apart, every graph checked against the default's), re-run the tests that failed there, then
# time match_vectors with the fastest tiles (1M gated as gpu_check's first run; 16384..262144
# gated) and profile the warm 16384 screened run (torch.profiler's op tables). Same stage
# helper and archive as gpu_check.sh. Limits 70 + 80 + 40 + 75 + 35 + 25 = 325 s.
NAME=gpu_sweep
source "$(dirname "$0")/gpu_stage.sh"
start=$SECONDS
GREP="error|Error" stage build "${T_BUILD:-70}" python3 setup.py -q build_ext --inplace -j 16
GREP="what=" TAIL=14 stage sweep "${T_SWEEP:-80}" python3 bench/bench_triton_tiles.py 8192 --wide 1048576 \
    --sel-sweep --budget "$(( ${T_SWEEP:-80} - 25 ))" ${SEL_LIST:+--sel-list "$SEL_LIST"} --json "$OUT/sweep.json"
SEL=$(python3 -c "
import json, sys
rows = json.load(open(sys.argv[1]))
print(next((r['sel'] for r in rows if r.get('what') == 'sel best'), '32,64,2,16;32,32,2'))" "$OUT/sweep.json" 2>/dev/null \
    || echo "32,64,2,16;32,32,2")
echo "selection tiles: $SEL" | tee "$OUT/sel.txt"
TAIL=8 stage tests "${T_TESTS:-40}" python3 -m pytest -q -n 8 -p no:cacheprovider tests/test_kernels.py \
    tests/test_gpu.py -k "gated or caps or minima"
cd bench
export MECHPERM_PROFILE_GEMM=1
GREP="F=|Error|error" stage match1m "${T_1M:-75}" python3 bench_match_gpu.py --sizes 1048576 --gpu-screen \
    --fused-pricing --candidates-k 32 --gated --trace --sel "$SEL" --json "$OUT/match1m.json"
GREP="F=|Error|error" stage matchmid "${T_MID:-35}" python3 bench_match_gpu.py \
    --sizes 16384,16384,16384,65536,65536,262144 --gated --sel "$SEL" --json "$OUT/matchmid.json"
unset MECHPERM_PROFILE_GEMM
GREP="F=|Error|error" stage profile "${T_PROF:-25}" python3 bench_match_gpu.py --sizes 16384,16384,16384 \
    --gpu-screen --fused-pricing --candidates-k 16 --gated --trace --sel "$SEL" --profile "$OUT/prof16384.txt" \
    --json "$OUT/prof16384.json"
cd ..
echo "total: $((SECONDS - start)) s" | tee "$OUT/total.txt"
archive
