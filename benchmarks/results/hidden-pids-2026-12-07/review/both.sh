#!/bin/sh
# usage: both.sh script.py  -> runs on base then new, sequentially
for p in base new; do echo "### $p"; PYTHONPATH=/tmp/rev-trees/$p timeout 500 /work/main/.venv/bin/python "$@"; done
