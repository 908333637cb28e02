#!/bin/sh
# Install what building and testing ds needs on Debian 12 (run as root, or with sudo).
# --test also installs what the test suite alone needs: python3-torch and python3-numpy (tests/ckpt.sh
# reads ds-ckpt's converted files with PyTorch; scripts/make-fixtures.py regenerates the fixtures
# with them), about a minute more.
set -e
TEST=""
case "${1:-}" in
"") ;;
--test) TEST="python3-torch python3-numpy iproute2" ;;
*) echo "usage: scripts/install-deps.sh [--test]" >&2; exit 2 ;;
esac
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential autoconf automake libtool pkg-config \
    libjson-c-dev libsqlite3-dev libssh-dev libcriterion-dev libdnnl-dev \
    openssh-server openssh-client python3 ca-certificates $TEST >/dev/null
[ -n "$TEST" ] && echo "install-deps: build dependencies and test dependencies (PyTorch, NumPy) installed" || echo "install-deps: build dependencies installed"
