#!/usr/bin/env bash
# One call on a lent GPU machine (see the README's "GPU" section): build the extension, run the
# CUDA tests, sweep the Triton tiles, time match_vectors(). Each stage has its own time limit so
# the whole stays inside one call; logs and JSON go to $OUT (or ./gpu_out).
#   T_TESTS=110 T_TILES=100 T_CROSS=40 T_MATCH=150 MATCH_MAX_N=65536 bash bench/gpu_check.sh
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/smi.txt"
python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"
start=$SECONDS
python3 setup.py -q build_ext --inplace -j 16 > "$OUT/build.log" 2>&1 || { tail -30 "$OUT/build.log"; exit 1; }
echo "build: $((SECONDS - start)) s"
stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, show the tail
    local name=$1 limit=$2; shift 2
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: rc $? in $((SECONDS - t0)) s"
    tail -n "${TAIL:-25}" "$OUT/$name.log"
}
stage tests "${T_TESTS:-110}" python3 -m pytest -q -x -n 8 -p no:cacheprovider tests/test_gpu.py tests/test_kernels.py
stage tiles "${T_TILES:-100}" python3 bench/bench_triton_tiles.py 16384 --json "$OUT/tiles.json" --budget $(( ${T_TILES:-100} - 25 ))
cd bench
stage crossover "${T_CROSS:-40}" python3 bench_match_gpu.py --crossover --json "$OUT/crossover.json"
MECHPERM_BENCH_MAX_N=${MATCH_MAX_N:-65536} stage match "${T_MATCH:-150}" python3 bench_match_gpu.py --json "$OUT/match.json"
echo "total: $((SECONDS - start)) s"
