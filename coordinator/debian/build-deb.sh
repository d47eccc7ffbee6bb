#!/bin/sh
# Builds phoenix_<ver>_<arch>.deb (coordinator + CLI) or phoenix-agent_<ver>_<arch>.deb
# from a staged tree with dpkg-deb, no debhelper needed.
#
#   coordinator/debian/build-deb.sh phoenix|phoenix-agent BIN_DIR OUT_DIR [AGENT_BIN_DIR]
#
# BIN_DIR holds the built binaries (target/release for shipping; the tests use
# target/debug). AGENT_BIN_DIR (default BIN_DIR) holds the phoenix-agent that both packages
# ship: for shipping target/x86_64-unknown-linux-gnu/release-agent, the size-optimised,
# statically linked build (`cargo build-agent`, .cargo/config.toml; the agent idles in every
# guest).
# Binaries are copied without debug info. Man pages and completions are generated from the
# clap definitions by `phoenix generate` / `phoenix-agent-docs` (built beside the agent by
# `cargo build -p phoenix-agent`; a build-machine tool, so the shipped agent carries no
# generator).
set -eu

pkg=${1:?usage: build-deb.sh phoenix|phoenix-agent BIN_DIR OUT_DIR [AGENT_BIN_DIR]}
bin_dir=${2:?BIN_DIR}
out_dir=${3:?OUT_DIR}
agent_dir=${4:-$bin_dir}
repo=$(cd "$(dirname "$0")/../.." && pwd)
version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -n 1)
arch=$(dpkg --print-architecture)

case "$pkg" in
phoenix)
    src=$repo/coordinator/debian
    binary=phoenix
    # The coordinator writes its own (hidden `phoenix generate`).
    generator=$bin_dir/phoenix
    generate_cmd=generate
    # groupadd/groupdel in the maintainer scripts.
    also_depends=", passwd"
    description="Phoenix coordinator: desired state for every guest of a Proxmox host"
    ;;
phoenix-agent)
    src=$repo/agent/debian
    binary=phoenix-agent
    bin_dir=$agent_dir
    generator=$bin_dir/phoenix-agent-docs
    generate_cmd=""
    also_depends=""
    description="Phoenix agent: converges this guest to the state its coordinator holds"
    ;;
*)
    echo "build-deb.sh: unknown package '$pkg' (phoenix or phoenix-agent)" >&2
    exit 2
    ;;
esac

stage=$(mktemp -d)
trap 'rm -rf "$stage"' EXIT INT TERM
root=$stage/root
install -d "$root/DEBIAN" "$root/usr/bin" "$root/lib/systemd/system"
objcopy --strip-debug "$bin_dir/$binary" "$root/usr/bin/$binary"
chmod 0755 "$root/usr/bin/$binary"
install -m 0644 "$src/$pkg.service" "$root/lib/systemd/system/$pkg.service"
for script in postinst prerm postrm; do
    install -m 0755 "$src/$script" "$root/DEBIAN/$script"
done

if [ "$pkg" = phoenix ]; then
    install -d "$root/etc/phoenix"
    install -m 0644 "$repo/configs/coordinator.example.toml" "$root/etc/phoenix/coordinator.toml"
    echo /etc/phoenix/coordinator.toml >"$root/DEBIAN/conffiles"
    # What `phoenix guest install` pushes into guests; the host itself runs no agent.
    install -d "$root/usr/lib/phoenix"
    objcopy --strip-debug "$agent_dir/phoenix-agent" "$root/usr/lib/phoenix/phoenix-agent"
    chmod 0755 "$root/usr/lib/phoenix/phoenix-agent"
else
    install -d "$root/etc/phoenix-agent"
    install -m 0644 "$repo/configs/agent.example.toml" "$root/etc/phoenix-agent/agent.toml"
    echo /etc/phoenix-agent/agent.toml >"$root/DEBIAN/conffiles"
fi

# Man pages and completions from the binary's own clap definitions.
"$generator" $generate_cmd man "$stage/man"
install -d "$root/usr/share/man/man1"
for page in "$stage"/man/*.1; do
    gzip -9n <"$page" >"$root/usr/share/man/man1/$(basename "$page").gz"
done
"$generator" $generate_cmd completions "$stage/completions"
install -D -m 0644 "$stage/completions/$binary.bash" "$root/usr/share/bash-completion/completions/$binary"
install -D -m 0644 "$stage/completions/_$binary" "$root/usr/share/zsh/vendor-completions/_$binary"
install -D -m 0644 "$stage/completions/$binary.fish" "$root/usr/share/fish/vendor_completions.d/$binary.fish"

size=$(du -sk "$root" | cut -f1)
# The newest glibc symbol version the binary links against is what it needs at least; a
# statically linked binary (the shipped agent, `cargo build-agent`) needs no C library.
glibc=$(objdump -T "$root/usr/bin/$binary" 2>/dev/null | grep -o 'GLIBC_[0-9.]*' | sed 's/GLIBC_//' | sort -uV | tail -n 1) || true
depends=""
[ -n "$glibc" ] && depends="libc6 (>= $glibc)"
depends="$depends$also_depends"
depends=${depends#, }
cat >"$root/DEBIAN/control" <<CONTROL
Package: $pkg
Version: $version
Architecture: $arch
Maintainer: Phoenix developers <phoenix@localhost>
${depends:+Depends: $depends
}Section: admin
Priority: optional
Installed-Size: $size
Description: $description
CONTROL

mkdir -p "$out_dir"
deb="$out_dir/${pkg}_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zgzip -z6 --build "$root" "$deb" >/dev/null
echo "$deb"
