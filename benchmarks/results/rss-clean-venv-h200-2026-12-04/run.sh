set -u
mk() {  # $1 name, $2 wheel dir
  python3 -m venv /tmp/$1 2>/dev/null || { rm -rf /tmp/$1; python3 -m venv --without-pip /tmp/$1 && python3 -m pip --python /tmp/$1/bin/python install -q --no-index --find-links .rsswhl/deps pip >/dev/null 2>&1; }
  /tmp/$1/bin/python -m pip install -q --no-index --find-links .rsswhl/deps .rsswhl/$2/*.whl 2>&1 | tail -2 || python3 -m pip --python /tmp/$1/bin/python install -q --no-index --find-links .rsswhl/deps .rsswhl/$2/*.whl
}
mk base base; mk new new
/tmp/new/bin/python -c "import vramwatch, sys; print(vramwatch.__version__, sys.version)"
python3 -c "import psutil,sys; print('system python3 bare RSS', psutil.Process().memory_info().rss/1e6, sys.version.split()[0])"
python3 -I -c "import sys; print(len(sys.modules))"; python3 -c "import sys; print('system modules at start', len(sys.modules))"; /tmp/new/bin/python -c "import sys; print('venv modules at start', len(sys.modules))"
for r in 1 2; do for t in base new; do echo "=== $t run $r"; python3 benchmarks/rss.py --python /tmp/$t/bin/python --serve 30; done; done
