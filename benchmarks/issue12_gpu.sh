#!/usr/bin/env bash
# Issue 12's measurements on a GPU host, into OUT (name parts to run them one call at a time):
#
#   bash benchmarks/issue12_gpu.sh OUT                      # every part, this tree alone
#   bash benchmarks/issue12_gpu.sh OUT BASE                 # and the base tree beside it (BASE: a directory that
#                                                           #   `git archive REF watchdog | tar -x -C BASE` filled)
#   bash benchmarks/issue12_gpu.sh OUT [BASE] procs rss     # only the parts named
#
# Parts: `suite` (the gpu test suite), `procs` (tick and scrape per count of small CUDA processes, raw NVML, nvitop
# like for like, full-snapshot tools, with the fit per process), `simulated` (the simulator at scale on this host's
# CPU: tick, scrape and their parts; with BASE, this tree, the base, then this tree again, one at a time, so that
# the host's drift shows as the gap between the two runs of this tree), `ab` (with BASE: the in-process A/B of the
# tick, both trees in one interpreter in alternating blocks: the code's own ratio), `rss` (resident memory by
# start-up step, with NVML), `profile` (cProfile's top entries of the tick over 64 small CUDA processes, half of
# them sawtooths, and of the simulator's 8 x 64; with BASE, the base tree's too). With BASE, `simulated` takes about
# 6 minutes on a fast 16-vCPU H200 host and can pass 10 on a slow one: give it a call of its own. Each Markdown
# or text file starts with the command that made it, the host and the exit status; the script exits 1 when any
# command failed. This tree is measured, never an installed vramwatch: `benchmarks/gpu_env.sh` puts it (and the
# wheels carried in `.whl/`) first on PYTHONPATH. A host without network needs `.whl/` to hold structlog's wheel
# and nvitop's (the peer `procs` compares with; the script stops at once when `procs` is named without it).
set -u
OUT=${1:?usage: issue12_gpu.sh OUT [BASE] [PART...]}
shift
BASE=
if [ $# -gt 0 ] && [ -d "$1" ]; then
    BASE=$1
    shift
    if [ ! -f "$BASE/watchdog/__init__.py" ]; then
        echo "issue12_gpu.sh: BASE ($BASE) holds no watchdog/ package (git archive REF watchdog | tar -x -C BASE)" >&2
        exit 2
    fi
fi
PARTS=${*:-suite procs simulated ${BASE:+ab} rss profile}
for part in $PARTS; do
    case $part in
    ab)
        if [ -z "$BASE" ]; then
            echo "issue12_gpu.sh: the part ab compares with a base tree: name BASE" >&2
            exit 2
        fi
        ;;
    suite | procs | simulated | rss | profile) ;;
    *)
        echo "issue12_gpu.sh: unknown part $part (suite, procs, simulated, ab, rss, profile; BASE must be an existing directory)" >&2
        exit 2
        ;;
    esac
done
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
. benchmarks/gpu_env.sh
# The like-for-like comparison is one of the targets: without nvitop, `procs` would measure vramwatch alone.
case " $PARTS " in
*" procs "*)
    if ! python3 -c "import nvitop" 2>/dev/null; then
        echo "issue12_gpu.sh: nvitop is not importable here; carry its wheel in .whl/ (pip download --no-deps -d .whl nvitop)" >&2
        exit 2
    fi
    ;;
esac
FAILED=0

# run FILE COMMAND...: the command, the host, its output and its exit status, into OUT/FILE.
run() {
    local file=$1 rc
    shift
    {
        echo "\$ $*"
        echo "host: $(hostname) $(nproc) cpus, $(date -u +%FT%TZ)"
    } >"$OUT/$file"
    "$@" >>"$OUT/$file" 2>&1
    rc=$?
    echo "exit: $rc" >>"$OUT/$file"
    tail -n 4 "$OUT/$file"
    return $rc
}

# with_base CMD...: CMD with the base tree's package imported as `vramwatch` (first on PYTHONPATH).
with_base() {
    mkdir -p "$OUT/.base-path"
    ln -sfn "$(cd "$BASE/watchdog" && pwd)" "$OUT/.base-path/vramwatch"
    PYTHONPATH="$OUT/.base-path${PYTHONPATH:+:$PYTHONPATH}" "$@"
}

for part in $PARTS; do
    case $part in
    suite) run gpu-suite.txt python3 -m pytest -m gpu tests/gpu -q || FAILED=1 ;;
    procs) run tick-procs.md python3 benchmarks/tick.py --procs 1,4,16,64 --repeat 200 --prefill 3600 \
        --no-simulated --json "$OUT/tick-procs.json" || FAILED=1 ;;
    simulated)
        # One tree at a time: with both at once, an H200 host once measured this tree's 8 x 64 tick at 23.15 ms
        # and the base's at 15.92 ms, where in-process the same call gave 0.75x and one at a time the VM 0.70x
        # (benchmarks/results/issue12-h200-2026-12-05b/).
        run sim-new.md python3 benchmarks/tick.py --simulated --repeat 30 --json "$OUT/sim-new.json" || FAILED=1
        if [ -n "$BASE" ]; then
            run sim-base.md with_base python3 benchmarks/tick.py --simulated --repeat 30 \
                --json "$OUT/sim-base.json" || FAILED=1
            echo "BASE: $BASE" >>"$OUT/sim-base.md"
            run sim-new-again.md python3 benchmarks/tick.py --simulated --repeat 30 \
                --json "$OUT/sim-new-again.json" || FAILED=1
        fi
        ;;
    ab) run tick-ab-sim.md python3 benchmarks/tick_ab.py --simulated scale512,scale --base-dir "$BASE" \
        --rounds 10 --ticks 10 || FAILED=1 ;;
    rss) run rss.md python3 benchmarks/rss.py || FAILED=1 ;;
    profile)
        # One tree at a time: the CUDA processes of two would share the card and the host.
        for tree in new ${BASE:+base}; do
            wrap=
            [ "$tree" = base ] && wrap=with_base
            run "profile-cuda-$tree.txt" $wrap python3 benchmarks/tick_profile.py --cuda --procs 64 --saw-every 2 \
                --prefill 3600 --ticks 200 --top 20 || FAILED=1
            run "profile-sim-$tree.txt" $wrap python3 benchmarks/tick_profile.py --simulated scale512 --prefill 3600 \
                --ticks 20 --top 20 || FAILED=1
        done
        ;;
    esac
done
exit $FAILED
