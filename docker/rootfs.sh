#!/bin/sh
# Lays out the whole root filesystem of veer's image in OUT, from a built
# binary: the binary, the shared libraries it links (glibc and libgcc_s, as
# ldd lists them), the CA bundle, /etc/passwd and /etc/group with the
# non-root user veer runs as (65532), and /etc/veer, where the config is
# mounted. /var/lib/veer (state_dir) is not here: the Dockerfile makes it,
# owned by that user.
# The Dockerfile runs it in its build stage; .ci/deploy runs it on this
# machine to build the same image FROM scratch from a local binary.
#
# Usage: rootfs.sh BINARY OUT
set -eu
bin=${1:?usage: rootfs.sh BINARY OUT}
out=${2:?usage: rootfs.sh BINARY OUT}
uid=65532

mkdir -p "$out/usr/local/bin" "$out/etc/ssl/certs" "$out/etc/veer" "$out/var/lib" "$out/tmp"
cp "$bin" "$out/usr/local/bin/veer"
chmod 0755 "$out/usr/local/bin/veer"

# `ldd` prints `name => /path (addr)` for libraries and `/path (addr)` for
# the loader; the vDSO has no file.
ldd "$bin" | awk '$2 == "=>" && $3 ~ /^\// { print $3 } $1 ~ /^\// { print $1 }' |
while read -r lib; do
    mkdir -p "$out$(dirname "$lib")"
    cp -L "$lib" "$out$lib"
done

cp /etc/ssl/certs/ca-certificates.crt "$out/etc/ssl/certs/ca-certificates.crt"
printf 'root:x:0:0:root:/root:/sbin/nologin\nveer:x:%s:%s:veer:/var/lib/veer:/sbin/nologin\n' "$uid" "$uid" > "$out/etc/passwd"
printf 'root:x:0:\nveer:x:%s:\n' "$uid" > "$out/etc/group"
printf 'hosts: files dns\n' > "$out/etc/nsswitch.conf"
chmod 1777 "$out/tmp"
