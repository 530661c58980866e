#!/bin/sh
# Builds a small root filesystem tarball from Debian's busybox-static: the busybox binary,
# a link for every applet, /etc/passwd and /etc/group with root, nobody and an ordinary
# user, and the usual empty directories. Usage: busybox-rootfs.sh OUT.tar
set -eu
out=${1:?usage: busybox-rootfs.sh OUT.tar}
bb=
for c in /bin/busybox /usr/bin/busybox; do [ -x "$c" ] && bb=$c && break; done
if [ -z "$bb" ]; then
    echo "busybox-static is not installed: apt-get install busybox-static" >&2
    exit 1
fi
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
chmod 755 "$dir"
mkdir -p "$dir/bin" "$dir/etc" "$dir/tmp" "$dir/root" "$dir/home/app" "$dir/proc" "$dir/sys" "$dir/dev" "$dir/var"
chmod 1777 "$dir/tmp"
cp "$bb" "$dir/bin/busybox"
for applet in $("$dir/bin/busybox" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$dir/bin/$applet"
done
cat > "$dir/etc/passwd" <<PASSWD
root:x:0:0:root:/root:/bin/sh
app:x:1000:1000:app:/home/app:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
PASSWD
cat > "$dir/etc/group" <<GROUP
root:x:0:
app:x:1000:
wheel:x:10:app
nogroup:x:65534:
GROUP
chown 1000:1000 "$dir/home/app"
tar -C "$dir" --numeric-owner -cf "$out" .
