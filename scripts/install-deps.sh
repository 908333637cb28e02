#!/bin/sh
# Install what building and testing ds needs on Debian 12 (run as root, or with sudo).
# Optional: python3-torch and python3-numpy only regenerate test fixtures (scripts/make-fixtures.py).
set -e
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
    build-essential autoconf automake libtool pkg-config \
    libjson-c-dev libsqlite3-dev libssh-dev libcriterion-dev libdnnl-dev \
    openssh-server openssh-client python3 ca-certificates >/dev/null
echo "install-deps: build dependencies installed"
