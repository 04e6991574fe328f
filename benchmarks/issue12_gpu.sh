#!/usr/bin/env bash
# Issue 12's measurements on a GPU host, into OUT (name parts to run them one call at a time):
#
#   bash benchmarks/issue12_gpu.sh OUT                      # every part, this tree alone
#   bash benchmarks/issue12_gpu.sh OUT BASE                 # and the base tree beside it (BASE: a directory that
#                                                           #   `git archive REF watchdog | tar -x -C BASE` filled)
#   bash benchmarks/issue12_gpu.sh OUT BASE procs simulated # only the parts named
#
# Parts: `suite` (the gpu test suite), `procs` (tick and scrape per count of small CUDA processes, raw NVML, nvitop
# like for like, full-snapshot tools, with the fit per process), `simulated` (the simulator at scale on this host's
# CPU: tick, scrape and their parts; with BASE, both trees at once, then the in-process A/B of the tick), `rss`
# (resident memory by start-up step, with NVML). Every file it writes starts with the command that made it.
# Where vramwatch is not installed (a lent GPU without network), the tree and `.whl/` are put on PYTHONPATH by
# `benchmarks/gpu_env.sh`.
set -u
OUT=${1:?usage: issue12_gpu.sh OUT [BASE] [PART...]}
BASE=${2:-}
shift $(($# < 2 ? $# : 2))
PARTS=${*:-suite procs simulated rss}
if [ -n "$BASE" ] && [ ! -f "$BASE/watchdog/__init__.py" ]; then
    echo "issue12_gpu.sh: BASE ($BASE) holds no watchdog/ package (git archive REF watchdog | tar -x -C BASE)" >&2
    exit 2
fi
mkdir -p "$OUT"
python3 -c 'import vramwatch' 2>/dev/null || . benchmarks/gpu_env.sh

# run FILE COMMAND...: the command, then its output, into OUT/FILE (and its last lines on the terminal).
run() {
    local file=$1
    shift
    { echo "\$ $*"; echo "host: $(hostname) $(nproc) cpus, $(date -u +%FT%TZ)"; "$@" 2>&1; } >"$OUT/$file"
    tail -n 4 "$OUT/$file"
}

# with_base CMD...: CMD with the base tree's package imported as `vramwatch` (first on PYTHONPATH).
with_base() {
    local pp
    pp=$(mktemp -d)
    ln -sfn "$(cd "$BASE/watchdog" && pwd)" "$pp/vramwatch"
    PYTHONPATH="$pp${PYTHONPATH:+:$PYTHONPATH}" "$@"
}

for part in $PARTS; do
    case $part in
    suite) run gpu-suite.txt python3 -m pytest -m gpu tests/gpu -q ;;
    procs) run tick-procs.md python3 benchmarks/tick.py --procs 1,4,16,64 --repeat 200 --prefill 3600 \
        --no-simulated --json "$OUT/tick-procs.json" ;;
    simulated)
        if [ -n "$BASE" ]; then
            # Both trees at once, each on its own cores: one host's state falls on both alike.
            run sim-new.md python3 benchmarks/tick.py --simulated --repeat 30 --json "$OUT/sim-new.json" &
            run sim-base.md with_base python3 benchmarks/tick.py --simulated --repeat 30 --json "$OUT/sim-base.json" &
            wait
            run tick-ab-sim.md python3 benchmarks/tick_ab.py --simulated scale512,scale --base-dir "$BASE" \
                --rounds 10 --ticks 10
        else
            run sim-new.md python3 benchmarks/tick.py --simulated --repeat 30 --json "$OUT/sim-new.json"
        fi
        ;;
    rss) run rss.md python3 benchmarks/rss.py ;;
    *)
        echo "issue12_gpu.sh: unknown part $part (suite, procs, simulated, rss)" >&2
        exit 2
        ;;
    esac
done
