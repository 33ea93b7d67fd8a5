# Sourced by bench/gpu_check.sh and bench/gpu_sweep.sh (NAME = their archive's name): logs go
# to a work folder (OUT, reset here) and are re-archived into $OUT/NAME.tgz after every stage
# (the device tool brings back at most 8 files, and a call cut off at its limit still brings
# back the archive so far).
set -u
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
ARCHIVE=$OUT/$NAME.tgz
OUT=$(mktemp -d "/tmp/$NAME.XXXXXX")
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.max.sm --format=csv | tee "$OUT/smi.txt"
python3 -c "import sys, torch, triton; print(sys.version.split()[0], torch.__version__, triton.__version__)"

stage() {  # stage NAME SECONDS CMD...: run with a time limit, log to $OUT/NAME.log, show the tail
    local name=$1 limit=$2; shift 2
    [ "$limit" -gt 0 ] || return 0
    local t0=$SECONDS
    timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
    echo "== $name: rc $? in $((SECONDS - t0)) s"
    grep -E "${GREP:-.}" "$OUT/$name.log" | tail -n "${TAIL:-25}"
    archive
}

archive() {
    tar czf "$ARCHIVE.tmp" -C "$OUT" . && mv "$ARCHIVE.tmp" "$ARCHIVE"
}
