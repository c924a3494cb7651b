#!/usr/bin/env bash
# Installs the Debian packages the test suite uses, when missing:
#   opencv-doc  - real (and one deliberately damaged) sample videos in several codecs
#   chromium    - headless browser for the web page test
# Needs root (as on CI and the developers' machines). On a developer's machine without root or network it
# prints what is missing and exits 0 (the tests that need those files then skip, naming the package).
# In CI (CI=true) a missing package is an error: the script exits 1 naming it, so no test skips quietly.
set -u
need=()
[ -d /usr/share/doc/opencv-doc ] || need+=(opencv-doc)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -eq 0 ]; then exit 0; fi
fail() {
  if [ "${CI:-}" = "true" ]; then
    echo "install-test-system-deps: ERROR (CI=true): $1; the tests that need ${need[*]} would skip" >&2
    exit 1
  fi
  echo "install-test-system-deps: $1 (their tests will skip)" >&2
  exit 0
}
if [ "$(id -u)" != "0" ]; then
  fail "not root; missing Debian packages: ${need[*]}"
fi
echo "install-test-system-deps: installing ${need[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
log=$(mktemp)
if ! apt-get update -qq >"$log" 2>&1; then
  echo "install-test-system-deps: apt-get update failed:" >&2; tail -5 "$log" >&2
fi
if ! apt-get install -y -qq --no-install-recommends "${need[@]}" >"$log" 2>&1; then
  tail -5 "$log" >&2
  rm -f "$log"
  fail "could not install ${need[*]}"
fi
rm -f "$log"
still=()
[ -d /usr/share/doc/opencv-doc ] || still+=(opencv-doc)
command -v chromium >/dev/null 2>&1 || still+=(chromium)
if [ ${#still[@]} -gt 0 ]; then
  need=("${still[@]}")
  fail "installed, but still missing: ${still[*]}"
fi
exit 0
