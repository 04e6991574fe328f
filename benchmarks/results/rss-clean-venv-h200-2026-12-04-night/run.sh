set -u
mk() {
  python3 -m venv /tmp/$1 2>/dev/null || { rm -rf /tmp/$1; python3 -m venv --without-pip /tmp/$1 && python3 -m pip --python /tmp/$1/bin/python install -q --no-index --find-links .rsswhl/deps pip >/dev/null 2>&1; }
  /tmp/$1/bin/python -m pip install -q --no-index --find-links .rsswhl/deps .rsswhl/$2/*.whl 2>&1 | tail -2
}
mk base base; mk new new
for r in 1 2; do for t in base new; do echo "=== $t run $r"; python3 benchmarks/rss.py --python /tmp/$t/bin/python --serve 30 | tee $OUT/rss-$t-run$r.md | tail -6; done; done
date
