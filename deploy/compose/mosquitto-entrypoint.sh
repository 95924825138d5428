#!/bin/sh
# Mosquitto for the compose stack, from the configuration Drover ships in
# deploy/mosquitto (mounted read-only at /etc/drover/mosquitto/stock).
#
# Runs as root only to do what deploy/mosquitto/README.md has an operator
# do on a broker host: copy the four PKI files out of the server's data
# volume (mode 0700, owned by the server's uid) so that the `mosquitto` user
# can read them, then start Mosquitto, which drops to that user. It then
# watches the server's CRL and, when it changes, installs the new one whole
# (copy to a temporary name, rename: Mosquitto 2.0 fails open on a half
# written CRL) and sends SIGHUP, the job of mqtt_crl_reload_command on a
# single host.
set -eu

SRC=/var/lib/drover/pki                 # the server's DATA_DIR/pki, read-only
PKI=/etc/drover/pki                     # where mosquitto.conf reads them
STOCK=/etc/drover/mosquitto/stock       # deploy/mosquitto
CONF=/mosquitto/config/drover.conf      # rendered below
POLL_S=${CRL_POLL_SECONDS:-5}

# The server writes its PKI and the first CRL at its first start.
i=0
until [ -s "$SRC/crl.pem" ] && [ -s "$SRC/server.key" ]; do
  i=$((i + 1))
  if [ "$i" -gt 120 ]; then
    echo "mosquitto-entrypoint: $SRC/crl.pem did not appear; is the drover service running with this volume?" >&2
    exit 1
  fi
  sleep 1
done

install_file() { # SOURCE NAME MODE: copy, then rename into place
  cp "$1" "$PKI/.$2.new"
  chown mosquitto:mosquitto "$PKI/.$2.new"
  chmod "$3" "$PKI/.$2.new"
  mv "$PKI/.$2.new" "$PKI/$2"
}
mkdir -p "$PKI" /etc/drover/mosquitto
install_file "$SRC/ca.crt" ca.crt 0644
install_file "$SRC/server.crt" server.crt 0644
install_file "$SRC/server.key" server.key 0600
install_file "$SRC/crl.pem" crl.pem 0644
cp "$STOCK/acl" /etc/drover/mosquitto/acl

# The stock file with three container changes; each line must be found, so
# a change to deploy/mosquitto/mosquitto.conf cannot silently slip through:
# - the server's listener 8884 listens on the container's interfaces (the
#   compose network), not loopback; compose does not publish it;
# - the log goes to stderr, unbuffered (`docker compose logs`);
# - persistence lives in the named volume at /mosquitto/data.
for line in '^listener 8884 127.0.0.1$' '^log_dest file ' '^persistence_location ' \
            '^max_queued_messages 0$' '^max_queued_bytes 0$'; do
  if ! grep -q "$line" "$STOCK/mosquitto.conf"; then
    echo "mosquitto-entrypoint: deploy/mosquitto/mosquitto.conf has no line matching $line; update deploy/compose/mosquitto-entrypoint.sh" >&2
    exit 1
  fi
done
sed -e 's|^listener 8884 127.0.0.1$|listener 8884|' \
    -e 's|^log_dest file .*|log_dest stderr|' \
    -e 's|^persistence_location .*|persistence_location /mosquitto/data/|' \
    "$STOCK/mosquitto.conf" > "$CONF"
chown -R mosquitto:mosquitto /mosquitto/data

# Watcher: the server rewrites crl.pem on every revocation and twice a day, and
# reissues server.crt before it expires; copy what changed, then SIGHUP
# Mosquitto (this script's PID, which the exec below hands over; PID 1 in the
# container), which rereads the CRL and the certificates.
(
  state() { cat "$SRC/ca.crt" "$SRC/server.crt" "$SRC/server.key" "$SRC/crl.pem" | cksum; }
  last=$(state)
  while sleep "$POLL_S" && kill -0 "$$" 2>/dev/null; do
    now=$(state 2>/dev/null) || continue
    if [ "$now" != "$last" ]; then
      install_file "$SRC/ca.crt" ca.crt 0644 \
        && install_file "$SRC/server.crt" server.crt 0644 \
        && install_file "$SRC/server.key" server.key 0600 \
        && install_file "$SRC/crl.pem" crl.pem 0644 \
        && kill -HUP "$$" && last=$now
    fi
  done
) &

exec mosquitto -c "$CONF"
