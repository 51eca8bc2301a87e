#!/usr/bin/env bash
# Remove what packaging/install.sh added under PREFIX (default ~/.local).
# Profiles (your messages and keys) are left alone: they live in the data directory.
set -euo pipefail
prefix=${PREFIX:-$HOME/.local}
rm -rf "$prefix/lib/cipherline" "$prefix/lib/cipherline.new"
rm -f "$prefix/bin/cipherline" "$prefix/share/applications/cipherline.desktop"
rm -f "$prefix/share/icons/hicolor/scalable/apps/cipherline.svg"
for size in 48 64 128 256; do
  rm -f "$prefix/share/icons/hicolor/${size}x${size}/apps/cipherline.png"
done
if command -v update-desktop-database >/dev/null; then
  update-desktop-database -q "$prefix/share/applications" || true
fi
echo "install: Cipherline removed from $prefix (profiles were kept)"
