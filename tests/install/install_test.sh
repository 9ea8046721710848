#!/usr/bin/env bash
# `cmake --install` of the build tree into a temporary prefix, then a C program outside the
# project built against it twice, with find_package(proxyattn) and with pkg-config, and run
# on the CPU backend. Catches a library a program needs and the install leaves out (undefined
# references), a package file that does not load, and flags that do not link.
# usage: install_test.sh <build dir> <cmake> <generator> <C compiler>
set -euo pipefail
build=$1 cmake=$2 generator=$3 cc=$4
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
prefix=$tmp/prefix

"$cmake" --install "$build" --prefix "$prefix" > "$tmp/install.log"
pc=$(find "$prefix" -name proxyattn.pc)  # lib/ or lib64/ (GNUInstallDirs)
config=$(find "$prefix" -name proxyattnConfig.cmake)
if [ ! -f "$prefix/include/proxyattn/proxyattn.h" ] || [ -z "$pc" ] || [ -z "$config" ]; then
  echo "FAIL: the install lacks the header, proxyattn.pc or proxyattnConfig.cmake:"
  find "$prefix" -type f
  exit 1
fi
if find "$prefix" -name '_C*.so' | grep -q .; then
  echo "FAIL: the install has the Python module: $(find "$prefix" -name '_C*.so')"
  exit 1
fi

echo "== find_package(proxyattn)"
"$cmake" -S "$here" -B "$tmp/cmake-build" -G "$generator" -DCMAKE_C_COMPILER="$cc" \
  -DCMAKE_PREFIX_PATH="$prefix" > "$tmp/configure.log" ||
  { cat "$tmp/configure.log"; exit 1; }
"$cmake" --build "$tmp/cmake-build" > "$tmp/build.log" || { cat "$tmp/build.log"; exit 1; }
"$tmp/cmake-build/consumer"

echo "== pkg-config proxyattn"
if ! command -v pkg-config > /dev/null; then
  echo "FAIL: pkg-config not found (scripts/setup-deps installs it)"
  exit 1
fi
flags=$(PKG_CONFIG_PATH=$(dirname "$pc") pkg-config --cflags --libs proxyattn)
echo "cc consumer.c $flags"
# shellcheck disable=SC2086  # the flags are words
"$cc" "$here/consumer.c" -o "$tmp/consumer-pc" $flags
# A shared libproxyattn (BUILD_SHARED_LIBS) is found beside the installed tree's libraries.
LD_LIBRARY_PATH="$(dirname "$(dirname "$pc")")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}" "$tmp/consumer-pc"
echo "install: all checks passed"
