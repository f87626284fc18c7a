#!/usr/bin/env bash
# Builds dist/virtkeep_<version>_amd64.deb from the checkout, offline
# (make deb): both binaries, the unit, sysusers and tmpfiles snippets, the
# default configuration (a conffile), manual pages, completions and docs.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH="$PATH:/usr/local/go/bin"
out=${1:-dist}
desc=$(git describe --always --dirty 2>/dev/null || echo unknown)
# Debian versions sort: 0.0~git<date of the commit>.<hash>
when=$(git log -1 --format=%cd --date=format:%Y%m%d%H%M%S 2>/dev/null || date -u +%Y%m%d%H%M%S)
version="0.0~git${when}.${desc//-/.}-1"
export SOURCE_DATE_EPOCH=$(git log -1 --format=%ct 2>/dev/null || date +%s)
stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT
root=$stage/root
mkdir -p "$root/DEBIAN" "$root/usr/bin" "$root/usr/sbin" "$root/lib/systemd/system" "$root/usr/lib/sysusers.d" \
	"$root/usr/lib/tmpfiles.d" "$root/etc/virtkeep" "$root/usr/share/doc/virtkeep" \
	"$root/usr/share/bash-completion/completions" "$root/usr/share/zsh/vendor-completions" "$root/usr/share/fish/vendor_completions.d"

flags="-trimpath -buildmode=pie -ldflags=-X=main.version=$version"
CGO_CFLAGS="-O2 -g -fstack-protector-strong -D_FORTIFY_SOURCE=2" CGO_LDFLAGS="-Wl,-z,relro -Wl,-z,now" \
	go build $flags -o "$root/usr/bin/virtkeep" ./cmd/virtkeep
CGO_CFLAGS="-O2 -g -fstack-protector-strong -D_FORTIFY_SOURCE=2" CGO_LDFLAGS="-Wl,-z,relro -Wl,-z,now" \
	go build $flags -o "$root/usr/sbin/virtkeepd" ./cmd/virtkeepd
strip --remove-section=.comment --remove-section=.note --strip-unneeded "$root/usr/bin/virtkeep" "$root/usr/sbin/virtkeepd"

docs=$stage/docs
"$root/usr/bin/virtkeep" gen-docs "$docs"
"$root/usr/sbin/virtkeepd" gen-docs "$docs"
go run ./cmd/internal/mangen docs/CLI.md "$docs/man5/virtkeep.yaml.5"
for s in 1 5 8; do
	mkdir -p "$root/usr/share/man/man$s"
	for f in "$docs/man$s"/*; do
		case $(basename "$f") in *-completion*) continue ;; esac
		gzip -9n -c "$f" > "$root/usr/share/man/man$s/$(basename "$f").gz"
	done
done
install -m 0644 "$docs/completions/virtkeep.bash" "$root/usr/share/bash-completion/completions/virtkeep"
install -m 0644 "$docs/completions/virtkeepd.bash" "$root/usr/share/bash-completion/completions/virtkeepd"
install -m 0644 "$docs/completions/_virtkeep" "$docs/completions/_virtkeepd" "$root/usr/share/zsh/vendor-completions/"
install -m 0644 "$docs/completions/virtkeep.fish" "$docs/completions/virtkeepd.fish" "$root/usr/share/fish/vendor_completions.d/"

sed -e 's|/usr/local/bin/virtkeepd|/usr/sbin/virtkeepd|g' -e 's|file:///usr/local/share/doc/virtkeep/CLI.md|man:virtkeepd(8)|' \
	systemd/virtkeepd.service > "$root/lib/systemd/system/virtkeepd.service"
chmod 0644 "$root/lib/systemd/system/virtkeepd.service"
install -m 0644 systemd/debian/sysusers.conf "$root/usr/lib/sysusers.d/virtkeep.conf"
install -m 0644 systemd/debian/tmpfiles.conf "$root/usr/lib/tmpfiles.d/virtkeep.conf"
# The configuration names key, secret and passphrase files and targets:
# root's only, as the Ansible role installs it.
install -m 0600 systemd/debian/virtkeep.yaml "$root/etc/virtkeep/virtkeep.yaml"
install -m 0644 systemd/debian/copyright "$root/usr/share/doc/virtkeep/copyright"
for d in README.md docs/*.md; do
	gzip -9n -c "$d" > "$root/usr/share/doc/virtkeep/$(basename "$d").gz"
done
sed "s/@VERSION@/$version/" systemd/debian/changelog | gzip -9n > "$root/usr/share/doc/virtkeep/changelog.Debian.gz"
install -m 0644 systemd/debian/conffiles "$root/DEBIAN/conffiles"
install -m 0755 systemd/debian/postinst systemd/debian/prerm systemd/debian/postrm "$root/DEBIAN/"

# Shared libraries the binaries need, as Debian names them.
shlibs=$(cd "$stage" && mkdir -p debian && printf 'Source: virtkeep\n\nPackage: virtkeep\nArchitecture: amd64\n' > debian/control &&
	dpkg-shlibdeps -O "root/usr/bin/virtkeep" "root/usr/sbin/virtkeepd" 2>/dev/null | sed 's/^shlibs:Depends=//')
size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@SIZE@/$size/" -e "s/@SHLIBS@/$shlibs/" systemd/debian/control.in > "$root/DEBIAN/control"
(cd "$root" && find . -type f ! -path './DEBIAN/*' ! -path './etc/*' -printf '%P\0' | sort -z | xargs -0 md5sum) > "$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/md5sums" "$root/DEBIAN/control"
find "$root" -type d -exec chmod 0755 {} +
mkdir -p "$out"
deb="$out/virtkeep_${version}_amd64.deb"
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >/dev/null
echo "$deb"
