#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when missing:
#   opencv-doc  - real (and one deliberately damaged) sample videos in several codecs
#   chromium    - headless browser for the web page test
# Needs root (as on CI and the developers' machines); without it, prints what is missing and the tests
# that need those files skip with a message naming the package.
set -u
need=()
[ -d /usr/share/doc/opencv-doc ] || need+=(opencv-doc)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
if [ "$(id -u)" != "0" ]; then
  echo "install-test-system-deps: not root; missing Debian packages: ${need[*]} (their tests will skip)" >&2
  exit 0
fi
echo "install-test-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null 2>&1 || true
apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null 2>&1 || \
  echo "install-test-system-deps: could not install ${need[*]} (their tests will skip)" >&2
exit 0
