#!/usr/bin/env bash
# The package's test (.ci/run, as root on a Debian machine): build it, install it with dpkg -i,
# check the user, files and permissions, check-config with the installed example, the unit with
# systemd-analyze verify, an upgrade over itself that keeps a changed station file, remove
# (the station file and the outbox stay) and purge (nothing stays).
#
# It installs a package and creates a system user on the machine it runs on: CI's, or a
# throw-away one. It refuses to run where care-gateway is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."

fail() { echo "test-deb: FAIL: $*" >&2; exit 1; }
step() { echo "test-deb: $*"; }
[ "$(id -u)" = 0 ] || fail "run as root (it installs the package)"
command -v dpkg >/dev/null || fail "not a Debian machine (no dpkg)"
if dpkg -s care-gateway >/dev/null 2>&1; then
  fail "care-gateway is installed on this machine already; not touching it"
fi
export DEBIAN_FRONTEND=noninteractive
if ! dpkg -s python3-venv >/dev/null 2>&1; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends python3-venv >/dev/null
fi

out=$(mktemp -d)
cleanup() {
  dpkg --purge care-gateway >/dev/null 2>&1 || true
  rm -rf "$out"
}
trap cleanup EXIT
station_python=$(/usr/bin/python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')

step "build (all: wheels for amd64 and arm64, Python $station_python)"
bash systemd/build-deb.sh --arch all --python "$station_python" --out "$out"
deb=$(ls "$out"/care-gateway_*_all.deb)
dpkg-deb -c "$deb" >"$out/contents"
for machine in x86_64 aarch64; do
  grep -q "pydantic_core-.*${machine}.*\.whl" "$out/contents" || fail "no $machine wheel of pydantic-core in $deb"
done

step "install"
dpkg -i "$deb" >"$out/install.log" 2>&1 || { cat "$out/install.log"; fail "dpkg -i"; }
grep -q "care-gateway 已安装" "$out/install.log" || fail "the first install does not say what to do next"
id care-gateway >/dev/null || fail "no user care-gateway"
for group in dialout bluetooth; do
  id -nG care-gateway | tr ' ' '\n' | grep -qx "$group" || fail "care-gateway is not in $group"
done
[ "$(getent passwd care-gateway | cut -d: -f7)" = /usr/sbin/nologin ] || fail "care-gateway can log in"
[ "$(stat -c '%U:%G %a' /etc/care-gateway)" = "root:care-gateway 750" ] || fail "/etc/care-gateway: $(stat -c '%U:%G %a' /etc/care-gateway)"
[ "$(stat -c '%U:%G %a' /etc/care-gateway/station.toml)" = "root:care-gateway 640" ] \
  || fail "station.toml: $(stat -c '%U:%G %a' /etc/care-gateway/station.toml)"
[ "$(stat -c '%U:%G %a' /var/lib/care-gateway)" = "care-gateway:care-gateway 700" ] || fail "/var/lib/care-gateway"
[ -f /lib/systemd/system/care-gateway.service ] || fail "no unit"
[ -x /opt/care-gateway/venv/bin/care-gateway ] || fail "no venv"
[ "$(/opt/care-gateway/venv/bin/python -c 'import sys; print(sys.base_prefix)')" = /usr ] || fail "the venv is not on Debian's python3"
[ "$(care-gateway --version)" = "care-gateway $(dpkg-deb -f "$deb" Version | cut -d- -f1)" ] || fail "care-gateway on PATH"
[ -f /opt/care-gateway/venv/lib/python*/site-packages/gateway/locale/zh_CN/LC_MESSAGES/care_gateway.mo ] \
  || fail "the Chinese catalog is not installed"
for doc in README.md operations.md operations.zh.md examples/village.toml; do
  [ -f "/usr/share/doc/care-gateway/$doc" ] || fail "no /usr/share/doc/care-gateway/$doc"
done

step "check-config with the installed example, as the service user"
runuser -u care-gateway -- care-gateway check-config --skip-files /etc/care-gateway/station.toml \
  || fail "check-config --skip-files on the installed example"
if runuser -u care-gateway -- care-gateway check-config /etc/care-gateway/station.toml >"$out/check.log" 2>&1; then
  fail "check-config passed a station whose certificate files are not there"
fi
grep -q "uplink.tls.ca_file: /etc/care-gateway/city-ca.pem does not exist" "$out/check.log" \
  || { cat "$out/check.log"; fail "check-config does not name the missing CA file"; }
LANG=zh_CN.UTF-8 care-gateway check-config /etc/care-gateway/station.toml >"$out/check.zh.log" 2>&1 || true
grep -q "city-ca.pem 不存在" "$out/check.zh.log" || fail "check-config is not in Chinese under LANG=zh_CN.UTF-8"

if command -v systemd-analyze >/dev/null; then
  step "systemd-analyze verify"
  systemd-analyze verify /lib/systemd/system/care-gateway.service 2>"$out/verify.log" || true
  if grep -v -e "Failed to connect to bus" "$out/verify.log" | grep -q "care-gateway"; then
    cat "$out/verify.log"
    fail "systemd-analyze verify complains about the installed unit"
  fi
else
  step "systemd-analyze missing: unit not verified"
fi

step "upgrade over itself, with a changed station file"
sed -i 's/^id = "nm-xilin-0012"/id = "hb-test-0001"/' /etc/care-gateway/station.toml
grep -q '^id = "hb-test-0001"' /etc/care-gateway/station.toml || fail "could not change the station file"
bash systemd/build-deb.sh --arch all --python "$station_python" --revision 2 --out "$out" >/dev/null
dpkg -i "$out"/care-gateway_*-2_all.deb >"$out/upgrade.log" 2>&1 || { cat "$out/upgrade.log"; fail "upgrade"; }
grep -q '^id = "hb-test-0001"' /etc/care-gateway/station.toml || fail "the upgrade replaced the changed station file"
[ "$(stat -c '%U:%G %a' /etc/care-gateway/station.toml)" = "root:care-gateway 640" ] || fail "station.toml after the upgrade"
[ "$(dpkg-query -W -f '${Version}' care-gateway)" = "$(dpkg-deb -f "$out"/care-gateway_*-2_all.deb Version)" ] || fail "version"
care-gateway check-config --skip-files /etc/care-gateway/station.toml >"$out/check.upgraded.log"
grep -q "station hb-test-0001" "$out/check.upgraded.log" || fail "check-config after the upgrade"

step "remove: the software goes, the station file and the outbox stay"
touch /var/lib/care-gateway/outbox.db
dpkg -r care-gateway >/dev/null
[ ! -e /opt/care-gateway/venv ] || fail "the venv stayed after remove"
[ ! -e /usr/bin/care-gateway ] || fail "/usr/bin/care-gateway stayed"
[ -f /etc/care-gateway/station.toml ] || fail "remove took the station file"
[ -f /var/lib/care-gateway/outbox.db ] || fail "remove took the outbox"

step "purge: nothing stays"
dpkg --purge care-gateway >/dev/null
for path in /etc/care-gateway /var/lib/care-gateway /opt/care-gateway /lib/systemd/system/care-gateway.service; do
  [ ! -e "$path" ] || fail "$path stayed after purge"
done
! id care-gateway >/dev/null 2>&1 || fail "the user stayed after purge"
step "OK"
