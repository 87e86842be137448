#!/usr/bin/env bash
# A virtualenv for the benchmarks on Debian's own CPython 3.11 (/usr/bin/python3.11), with sipledger
# installed in it (editable, the same sources) and the SIP core compiled. Prints its python.
#
# Why: python3 on this machine kind is pyenv's build of 3.11.7, configured without
# --enable-optimizations or --with-lto and running from a shared libpython (its sysconfig CONFIG_ARGS
# and ldd say so). Debian's interpreter is a statically linked binary built by Debian with
# optimisation; here the B2BUA's core path took a sixth less CPU on it (bench/README.md, "third pass").
# Both Python B2BUAs of bench/b2bua_cps.py (sipledger and Sippy) run on the interpreter that runs
# the bench, so run it with this one to compare them on an optimised interpreter:
#
#     PY=$(bench/optimized_python.sh) && $PY bench/b2bua_cps.py ...
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.stack/py-debian
if [ ! -x /usr/bin/python3.11 ] || ! /usr/bin/python3.11 -c 'import ensurepip' 2>/dev/null; then
  apt-get install -y -qq python3.11 python3.11-venv >&2
fi
[ -x "$VENV/bin/python" ] || /usr/bin/python3.11 -m venv "$VENV" >&2
"$VENV/bin/pip" install -q -e ".[native,bench]" >&2
"$VENV/bin/python" -m b2bua.native_build >&2
echo "$PWD/$VENV/bin/python"
