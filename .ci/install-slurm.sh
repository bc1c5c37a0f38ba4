#!/bin/sh
# Install a single-node Slurm (Debian 12: Slurm 22.05, munge 0.5) for tests/test_slurm.py.
# Idempotent; needs root and network to the Debian mirrors. Nothing is started here: the
# tests start and stop their own daemons (tests/slurm_cluster.py), so the packages' services
# are kept from starting during the install (policy-rc.d, honoured by invoke-rc.d and
# deb-systemd-invoke).
set -eu
if command -v slurmctld >/dev/null && command -v slurmd >/dev/null && command -v sbatch >/dev/null \
    && command -v munged >/dev/null; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    echo "install-slurm.sh: must run as root (apt-get)" >&2
    exit 1
fi
policy=/usr/sbin/policy-rc.d
saved=""
if [ -e "$policy" ]; then
    saved=$(mktemp)
    cp -p "$policy" "$saved"
fi
restore() {
    if [ -n "$saved" ]; then mv "$saved" "$policy"; else rm -f "$policy"; fi
}
trap restore EXIT
printf '#!/bin/sh\nexit 101\n' > "$policy"
chmod 755 "$policy"
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends slurmctld slurmd slurm-client munge >/dev/null
