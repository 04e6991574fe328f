# Source this on a GPU host that has PyTorch but not vramwatch installed (e.g. a lent cloud GPU with no
# network): installs the carried wheels (.whl/*.whl) into /tmp/site and puts the source tree on PYTHONPATH
# under the name `vramwatch`. With vramwatch pip-installed, you need none of this.
set -e
if ls .whl/*.whl >/dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
mkdir -p /tmp/pp && ln -sfn "$PWD/watchdog" /tmp/pp/vramwatch
export PYTHONPATH=/tmp/pp:/tmp/site${PYTHONPATH:+:$PYTHONPATH}
export PYTHONUNBUFFERED=1
set +e
