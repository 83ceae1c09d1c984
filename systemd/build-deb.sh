#!/usr/bin/env bash
# Builds the station's Debian package: care-gateway_<version>-<revision>_<arch>.deb in dist/.
#
#   bash systemd/build-deb.sh                      # arm64 (a Raspberry Pi 3/4/5 with a 64-bit OS)
#   bash systemd/build-deb.sh --arch amd64         # an x86 mini PC
#   bash systemd/build-deb.sh --arch all           # both sets of wheels in one package
#   options: --python 3.11 (the station's python3: Debian 12 / Raspberry Pi OS bookworm),
#            --revision N (the Debian revision, for an upgrade of the same version), --out DIR
#
# The package carries every wheel the station needs (pip download --platform fetches arm64
# wheels on an x86 machine; each file is checked against requirements.lock's sha256), so a
# station installs it with no package index and no compiler. What it does on a station:
# systemd/README.md ("One package"); docs/operations.zh.md in Chinese.
set -euo pipefail
cd "$(dirname "$0")/.."

arch=arm64
python_version=3.11
revision=1
out=dist
while [ $# -gt 0 ]; do
  case "$1" in
    --arch) arch="$2"; shift 2 ;;
    --python) python_version="$2"; shift 2 ;;
    --revision) revision="$2"; shift 2 ;;
    --out) out="$2"; shift 2 ;;
    -h|--help) sed -n '2,14p' "$0"; exit 0 ;;
    *) echo "build-deb: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done
case "$arch" in
  all) machines="x86_64 aarch64" ;;
  amd64) machines="x86_64" ;;
  arm64) machines="aarch64" ;;
  *) echo "build-deb: --arch must be all, amd64 or arm64 (got $arch)" >&2; exit 2 ;;
esac
command -v dpkg-deb >/dev/null || { echo "build-deb: dpkg-deb is needed (apt-get install dpkg)" >&2; exit 1; }
# a Python with pip that builds the wheel and fetches the others: the project's venv if set up
python=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python3 )}
"$python" -m pip --version >/dev/null 2>&1 || { echo "build-deb: $python has no pip (bash .ci/setup)" >&2; exit 1; }

version=$("$python" -c 'import tomllib; print(tomllib.load(open("pyproject.toml", "rb"))["project"]["version"])')
package="care-gateway_${version}-${revision}_${arch}"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root="$work/$package"
wheels="$root/opt/care-gateway/wheels"
mkdir -p "$wheels" "$root/DEBIAN" "$root/lib/systemd/system" "$root/etc/care-gateway" \
  "$root/usr/bin" "$root/usr/share/doc/care-gateway/examples"

# the gateway's own wheel (pure Python, with the compiled message catalogs), then its dependencies
"$python" -m pip wheel -q --no-deps -w "$wheels" . 2>&1 | { grep -v "^WARNING: Location" || true; }
for machine in $machines; do  # glibc 2.17 to 2.36: what Debian 12 (glibc 2.36) can load
  platform=(--platform "manylinux2014_$machine")
  for minor in $(seq 17 36); do platform+=(--platform "manylinux_2_${minor}_$machine"); done
  "$python" -m pip download -q --require-hashes --no-deps --only-binary=:all: --implementation cp \
    --python-version "$python_version" "${platform[@]}" -d "$wheels" -r requirements.lock 2>&1 \
    | { grep -v "^WARNING: Location" || true; }
done

install -m 644 systemd/care-gateway.service "$root/lib/systemd/system/care-gateway.service"
install -m 640 config/village.toml "$root/etc/care-gateway/station.toml"
install -m 644 config/*.toml "$root/usr/share/doc/care-gateway/examples/"
install -m 644 README.md docs/operations.md docs/operations.zh.md "$root/usr/share/doc/care-gateway/"
install -m 644 README.md "$root/opt/care-gateway/README.md"
ln -s /opt/care-gateway/venv/bin/care-gateway "$root/usr/bin/care-gateway"
printf 'care-gateway %s, Apache-2.0. The wheels in /opt/care-gateway/wheels carry their own licences.\n' \
  "$version" >"$root/usr/share/doc/care-gateway/copyright"

cat >"$root/DEBIAN/control" <<EOF
Package: care-gateway
Version: ${version}-${revision}
Architecture: ${arch}
Maintainer: care-gateway developers <care-gateway@users.noreply.github.com>
Depends: python3 (>= ${python_version}), python3 (<< ${python_version%.*}.$(( ${python_version#*.} + 1 ))), python3-venv, passwd
Recommends: bluez
Section: misc
Priority: optional
Installed-Size: $(du -sk "$root" | cut -f1)
Homepage: https://github.com/care-gateway/care-gateway
Description: elderly-care station gateway (devices -> SQLite outbox -> MQTT)
 Reads emergency-button receivers, mmWave fall sensors and BLE wearables, applies care
 rules at the edge, keeps every event in SQLite until the city platform has acknowledged
 it, sends alarms ahead of any backlog and by SMS when the link is down.
EOF
echo /etc/care-gateway/station.toml >"$root/DEBIAN/conffiles"
install -m 755 systemd/deb/postinst systemd/deb/prerm systemd/deb/postrm "$root/DEBIAN/"

mkdir -p "$out"
dpkg-deb --root-owner-group -Zxz --build "$root" "$out/$package.deb" >/dev/null
echo "$out/$package.deb ($(du -h "$out/$package.deb" | cut -f1), $(find "$wheels" -name '*.whl' | wc -l) wheels)"
