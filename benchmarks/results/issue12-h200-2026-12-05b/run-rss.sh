# Clean-venv RSS of a base and a new wheel on a GPU host without network (OUT set by the device tool):
#   .rsswhl/deps/  the dependencies' wheels (pip download --python-version 3.12 --only-binary=:all:
#                  --platform manylinux2014_x86_64 -d .rsswhl/deps nvidia-ml-py psutil prometheus-client click
#                  structlog PyYAML rich tomli-w pip setuptools)
#   .rsswhl/base/, .rsswhl/new/  one vramwatch-daemon wheel each (pip wheel --no-deps -w DIR TREE)
# Each venv holds vramwatch-daemon and its dependencies only; benchmarks/rss.py prints the start-up table, then
# runs a real `vramwatch serve` on NVML for 30 s, scraped every 15 s, its RSS sampled each second.
set -u
mk() {
  python3 -m venv /tmp/$1 2>/dev/null || { rm -rf /tmp/$1; python3 -m venv --without-pip /tmp/$1 && python3 -m pip --python /tmp/$1/bin/python install -q --no-index --find-links .rsswhl/deps pip >/dev/null 2>&1; }
  /tmp/$1/bin/python -m pip install -q --no-index --find-links .rsswhl/deps .rsswhl/$2/*.whl 2>&1 | tail -2
}
mk base base; mk new new
for r in ${ROUNDS:-1}; do for t in base new; do echo "=== $t run $r"; python3 benchmarks/rss.py --python /tmp/$t/bin/python --serve 30 | tee $OUT/rss-$t-run$r.md | tail -6; done; done
date
