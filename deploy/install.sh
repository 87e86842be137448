#!/usr/bin/env bash
# Installs everything sipledger and its test suite need on a fresh Debian machine:
# system packages (apt), the Python package with its test extra (pip), and Kafka's jars (Maven).
# Safe to run again: each step skips what is already there.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
command -v clickhouse-server >/dev/null || need_apt+=(clickhouse-server clickhouse-client)
command -v sipp >/dev/null || need_apt+=(sip-tester)
command -v sipsak >/dev/null || need_apt+=(sipsak)
# Kamailio: the C reference bench/b2bua_cps.py measures the B2BUA against (never used at runtime).
command -v kamailio >/dev/null || [ -x /usr/sbin/kamailio ] || need_apt+=(kamailio)
command -v docker-compose >/dev/null || need_apt+=(docker-compose)
command -v systemd-analyze >/dev/null || need_apt+=(systemd)  # verifies deploy/systemd/ in the tests
command -v chromium >/dev/null || need_apt+=(chromium)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
command -v mvn >/dev/null || need_apt+=(maven)
# `sipledger trace --export` writes captures that tshark and sngrep must open (tested with both).
command -v tshark >/dev/null || need_apt+=(tshark)
command -v sngrep >/dev/null || need_apt+=(sngrep)
# A C compiler and the interpreter's headers: mypyc compiles the B2BUA core at install (below).
command -v gcc >/dev/null || need_apt+=(gcc)
"${PYTHON:-python3}" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' \
  || need_apt+=(python3-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  echo "install: apt-get install ${need_apt[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # tshark's package asks whether non-root users may capture (setuid dumpcap): answer no up front.
  echo "wireshark-common wireshark-common/install-setuid boolean false" | debconf-set-selections
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
echo "install: pip install -e .[test,native]"
"$PY" -m pip install -q --disable-pip-version-check -e '.[test,native]'

# The B2BUA core (SIP and call core) compiled to C by mypyc (b2bua/native.py). A build
# that no longer matches the sources is never loaded; this builds again only when they differ.
echo "install: compile the B2BUA core (mypyc)"
"$PY" -m b2bua.native_build

echo "install: Kafka jars (Maven)"
"$PY" -m sipledger.cli stack fetch-kafka
