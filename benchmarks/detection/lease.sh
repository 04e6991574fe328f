#!/bin/bash
# Record corpus scenarios longer than one device call (10 min) on a lent GPU: the recording runs detached from
# a frozen copy of the tree, and each call waits for it at most ~9.5 min.
#
#   bash benchmarks/detection/lease.sh start SCENARIO [corpus.py flags]   # call 1: starts it, waits
#   bash benchmarks/detection/lease.sh wait                              # calls 2..n: waits; packs it into $OUT
#
# Make the calls back to back (a lent machine is given back after 30 s idle, and the recording with it).
set -u
LOG=/tmp/corpus.log
T0=$(date +%s)
budget() { [ $(( $(date +%s) - T0 )) -lt "${LEASE_CALL_SECONDS:-570}" ]; }
case "${1:-}" in
start)
    shift
    rm -rf /tmp/rec && mkdir -p /tmp/rec && cp -a . /tmp/rec/ && cd /tmp/rec || exit 1
    # A frozen copy: the next calls re-send the working tree, which must not change code mid-recording.
    (setsid nohup bash -c ". benchmarks/gpu_env.sh; python3 benchmarks/detection/corpus.py /tmp/corpus $* > $LOG 2>&1; echo EXIT \$? >> $LOG" \
        > /dev/null 2>&1 < /dev/null &)
    ;;
wait)
    # A fresh machine (the last one was given back: more than 30 s between calls) has no recording: say so at
    # once instead of waiting out the call's budget on nothing.
    [ -f $LOG ] || { echo "NO RECORDING HERE: this machine is fresh (the last call's machine was given back); start again" >&2; exit 3; }
    ;;
*) echo "usage: lease.sh start SCENARIO [flags] | wait" >&2; exit 2 ;;
esac
while budget && ! grep -q '^EXIT' $LOG 2>/dev/null; do sleep 5; done
tail -15 $LOG
if grep -q '^EXIT' $LOG; then
    cp $LOG "$OUT/"
    cp /tmp/corpus/summary.json "$OUT/" 2>/dev/null
    if [ -f /tmp/corpus/corpus.tar.gz ]; then cp /tmp/corpus/corpus.tar.gz "$OUT/"; else (cd /tmp && tar czf "$OUT/corpus.tar.gz" corpus); fi
    ls -la "$OUT"
else
    echo "STILL RUNNING: call 'lease.sh wait' again at once"
fi
