#!/usr/bin/env bash
# The agent's GPU proofs, one after the other, on the first visible GPU. Needs a Python with PyTorch + CUDA
# (and Lightning for lightning_save.py). Writes agent_results.json and agent_log.txt to $OUT (or ./agent-results).
#
#   bash benchmarks/agent/run_all.sh            # PYTHON=python3 by default
#
# vramwatch need not be installed there: the source folder is linked as `vramwatch` on PYTHONPATH (its
# agent, runner and listener need only the standard library plus structlog).
set -u
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-python3}
OUTDIR=${OUT:-$ROOT/agent-results}
RAW=$(mktemp -d /tmp/vramwatch-agent-proofs.XXXXXX)
mkdir -p "$OUTDIR"
export PYTHONUNBUFFERED=1
if ! "$PY" -c "import vramwatch.agenthost.runner" 2>/dev/null; then
    mkdir -p "$RAW/src" && ln -sfn "$ROOT/watchdog" "$RAW/src/vramwatch"
    export PYTHONPATH="$RAW/src${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" -c "import vramwatch.agenthost.runner" || { echo "vramwatch.agenthost.runner is not importable" >&2; exit 2; }
export VRAMWATCH_SNAPSHOT_MAX_ENTRIES=${VRAMWATCH_SNAPSHOT_MAX_ENTRIES:-20000}
BENCH=benchmarks/agent

proof() {  # NAME [runner options] -- command...
    local name=$1; shift
    echo "== $name" >&2
    "$PY" -m vramwatch.agenthost.runner --events "$RAW/$name.events.jsonl" "$@" >"$RAW/$name.out.jsonl" 2>"$RAW/$name.err"
    echo $? >"$RAW/$name.rc"
    echo "   exit $(cat "$RAW/$name.rc")" >&2
}

proof fragment_default --snapshot "$RAW/snapshots" -- "$PY" $BENCH/fragment.py
PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True proof fragment_expandable -- "$PY" $BENCH/fragment.py
proof leak -- "$PY" $BENCH/leak.py
proof overhead -- "$PY" $BENCH/overhead.py
proof lightning --pressure-headroom 0.25 -- "$PY" $BENCH/lightning_save.py

if "$PY" -c "import pytest" 2>/dev/null; then
    echo "== gpu tests" >&2
    "$PY" -m pytest -q -p no:cacheprovider -m gpu tests/gpu/test_agent_gpu.py >"$RAW/gpu_tests.err" 2>&1
    echo $? >"$RAW/gpu_tests.rc"
fi

"$PY" $BENCH/check.py "$RAW" >"$OUTDIR/agent_results.json"
status=$?
for f in "$RAW"/*.err; do
    echo "===== $(basename "$f")"; tail -n 40 "$f"
done >"$OUTDIR/agent_log.txt"
snapshot=$(ls "$RAW"/snapshots/*.pickle 2>/dev/null | head -n 1)
[ -n "$snapshot" ] && cp "$snapshot" "$OUTDIR/oom_snapshot.pickle"
cat "$OUTDIR/agent_results.json"
exit $status
