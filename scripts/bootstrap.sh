#!/usr/bin/env bash
# Idempotent setup: Debian packages (when root with apt), then .venv with the project.
# Safe to run again and again; it only does what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

APT_PACKAGES=(
  softhsm2 swtpm swtpm-tools tpm2-tools etcd-server postgresql xvfb libsodium23
  # What Qt's xcb platform plugin loads when the real app runs on a display.
  libxcb-cursor0 libxkbcommon-x11-0 libxcb-icccm4 libxcb-keysyms1 libxcb-shape0
  libxcb-render-util0 libxcb-image0 libxcb-randr0 libxcb-xinerama0 libegl1 libgl1
  libfontconfig1 libdbus-1-3 fonts-dejavu-core
  # Reactions and the emoji people type need a colour emoji font to be seen.
  fonts-noto-color-emoji
  # desktop-file-validate checks the packaged desktop entry.
  desktop-file-utils
  # A real Secret Service (OS keyring) for the tests and `make run` on a machine
  # without a desktop session: gnome-keyring-daemon on a private D-Bus session bus.
  gnome-keyring dbus-daemon
)

missing=()
for package in "${APT_PACKAGES[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$package")
  fi
done

if ((${#missing[@]})); then
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
    echo "bootstrap: installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    echo "bootstrap: these Debian packages are missing; install them with:" >&2
    echo "    sudo apt-get install -y ${missing[*]}" >&2
    echo "bootstrap: continuing with what is installed (tests needing them will fail)." >&2
  fi
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: Python 3.11 or newer is needed (found $("$PYTHON" --version 2>&1))" >&2
  exit 1
fi
if [[ ! -x .venv/bin/python ]]; then
  echo "bootstrap: creating .venv"
  "$PYTHON" -m venv .venv
fi

# Reinstall only when the dependency list changed.
stamp=".venv/.cipherline-installed-$(sha256sum pyproject.toml | cut -c1-16)"
if [[ ! -f $stamp ]]; then
  echo "bootstrap: installing Cipherline and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e '.[dev]'
  rm -f .venv/.cipherline-installed-*
  touch "$stamp"
fi
