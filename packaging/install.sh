#!/usr/bin/env bash
# Install the frozen desktop app for the current user: the bundle, a launcher on
# PATH, the desktop entry and the icons, all under PREFIX (default ~/.local).
# Run `make package` first. `packaging/uninstall.sh` removes exactly what this adds.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
prefix=${PREFIX:-$HOME/.local}
bundle=$here/dist/cipherline
resources=$here/../app/ui/resources

if [[ ! -x $bundle/cipherline ]]; then
  echo "install: no bundle at $bundle; run 'make package' first" >&2
  exit 1
fi

mkdir -p "$prefix/lib" "$prefix/bin" "$prefix/share/applications"
# Copy next to the old install, then swap, so a failed copy leaves the old one working.
rm -rf "$prefix/lib/cipherline.new"
cp -a "$bundle" "$prefix/lib/cipherline.new"
rm -rf "$prefix/lib/cipherline"
mv "$prefix/lib/cipherline.new" "$prefix/lib/cipherline"
ln -sfn "$prefix/lib/cipherline/cipherline" "$prefix/bin/cipherline"

sed "s|@EXEC@|$prefix/bin/cipherline|g" "$here/cipherline.desktop.in" \
  > "$prefix/share/applications/cipherline.desktop"

install -Dm644 "$resources/cipherline.svg" "$prefix/share/icons/hicolor/scalable/apps/cipherline.svg"
for size in 48 64 128 256; do
  install -Dm644 "$resources/cipherline-$size.png" \
    "$prefix/share/icons/hicolor/${size}x${size}/apps/cipherline.png"
done

if command -v update-desktop-database >/dev/null; then
  update-desktop-database -q "$prefix/share/applications" || true
fi
echo "install: Cipherline installed under $prefix (run 'cipherline' or find it in your menu)"
