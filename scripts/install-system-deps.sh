#!/usr/bin/env bash
# Installs the Debian packages the tests and the demo use, when they are
# missing and we can (root on a Debian-like system). Says why when it can't.
set -euo pipefail

PACKAGES=(
  pcscd vsmartcard-vpcd vsmartcard-vpicc opensc yubico-piv-tool pcsc-tools
  swtpm swtpm-tools tpm2-tools libtss2-dev pkg-config swig libpcsclite-dev
  util-linux procps openssl python3-pycryptodome iproute2 openssh-client
)

missing=()
if command -v dpkg-query >/dev/null 2>&1; then
  for p in "${PACKAGES[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "ok installed" || missing+=("$p")
  done
else
  echo "install-system-deps: not a Debian-like system; end-to-end tests will be skipped" >&2
  exit 0
fi

if [ ${#missing[@]} -eq 0 ]; then
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  echo "install-system-deps: missing ${missing[*]}; run as root (or apt-get install them)" >&2
  exit 0
fi
echo "install-system-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
