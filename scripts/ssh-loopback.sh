#!/bin/sh
# A private sshd on 127.0.0.1 and 127.0.0.2 port 2222 (design/machine-notes.md), for the
# launcher's ssh test (tests/ssh.sh). Run as root.  ssh-loopback.sh start | stop
# start: generates host and user keys under $DIR (default /tmp/ds-sshd), puts the user key in
# ~/.ssh (id_ed25519, unless one exists: then the user key is added to authorized keys too) and
# known_hosts entries for [127.0.0.1]:2222 and [127.0.0.2]:2222. It also starts an "impostor" sshd
# on 127.0.0.2 port 2223 with another host key, while known_hosts names the real key for
# [127.0.0.2]:2223: connecting there must be refused as a changed host key.
set -e
DIR=${DS_SSHD_DIR:-/tmp/ds-sshd}
case "$1" in
start)
    mkdir -p "$DIR" /run/sshd "$HOME/.ssh"
    chmod 700 "$HOME/.ssh"
    [ -f "$DIR/host_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/host_ed25519"
    [ -f "$DIR/impostor_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$DIR/impostor_ed25519"
    [ -f "$HOME/.ssh/id_ed25519" ] || ssh-keygen -q -t ed25519 -N '' -f "$HOME/.ssh/id_ed25519"
    cp "$HOME/.ssh/id_ed25519.pub" "$DIR/authorized_keys"
    cat >"$DIR/sshd_config" <<CONF
Port 2222
ListenAddress 127.0.0.1
ListenAddress 127.0.0.2
HostKey $DIR/host_ed25519
AuthorizedKeysFile $DIR/authorized_keys
PasswordAuthentication no
KbdInteractiveAuthentication no
PubkeyAuthentication yes
PermitRootLogin prohibit-password
UsePAM no
StrictModes no
PidFile $DIR/sshd.pid
CONF
    sed -e 's/^Port 2222/Port 2223/' -e '/^ListenAddress 127.0.0.1/d' \
        -e "s|^HostKey .*|HostKey $DIR/impostor_ed25519|" -e "s|^PidFile .*|PidFile $DIR/impostor.pid|" \
        "$DIR/sshd_config" >"$DIR/impostor_config"
    for c in sshd impostor; do
        if [ -f "$DIR/$c.pid" ] && kill -0 "$(cat "$DIR/$c.pid")" 2>/dev/null; then
            :
        else
            /usr/sbin/sshd -f "$DIR/${c}_config"
        fi
    done
    kh="$HOME/.ssh/known_hosts"
    touch "$kh"
    ssh-keygen -R "[127.0.0.2]:2223" -f "$kh" >/dev/null 2>&1 || true
    echo "[127.0.0.2]:2223 $(cut -d' ' -f1,2 "$DIR/host_ed25519.pub")" >>"$kh"
    for h in 127.0.0.1 127.0.0.2; do
        ssh-keygen -R "[$h]:2222" -f "$kh" >/dev/null 2>&1 || true
        echo "[$h]:2222 $(cut -d' ' -f1,2 "$DIR/host_ed25519.pub")" >>"$kh"
    done
    ;;
stop)
    for c in sshd impostor; do
        if [ -f "$DIR/$c.pid" ]; then
            kill "$(cat "$DIR/$c.pid")" 2>/dev/null || true
            rm -f "$DIR/$c.pid"
        fi
    done
    ;;
*) echo "usage: $0 start|stop" >&2; exit 2 ;;
esac
