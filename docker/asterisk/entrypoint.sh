#!/bin/sh
# Puts the dialer's AMI secret (OUTBOUND_AMI_SECRET, the same value the dialer's
# containers get) into the account install-conf wrote, then runs Asterisk. The image
# itself holds only a throwaway secret.
set -eu
conf=/etc/asterisk/manager.d/outbound.conf
secret="${OUTBOUND_AMI_SECRET:-}"
case "$secret" in
  "" ) echo "OUTBOUND_AMI_SECRET is not set" >&2; exit 1 ;;
  *[!A-Za-z0-9._-]* ) echo "OUTBOUND_AMI_SECRET: use letters, digits, . _ - only" >&2; exit 1 ;;
esac
[ "${#secret}" -ge 16 ] || { echo "OUTBOUND_AMI_SECRET: at least 16 characters" >&2; exit 1; }
sed -i "s/^secret = .*/secret = $secret/" "$conf"
exec "$@"
