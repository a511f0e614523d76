#!/usr/bin/env bash
# Stop the single-node SLURM cluster that start-local-cluster.sh started.
#
#   sudo bash cluster/slurm/stop-local-cluster.sh         # stop slurmd, slurmctld and slurmdbd
#   sudo bash cluster/slurm/stop-local-cluster.sh --all   # ... then MariaDB and munged as well
#
# MariaDB and munged stay up by default because other programs on the machine may use them.
# Jobs still running are killed with slurmd; the accounting database, the job state under
# /var/spool/slurmctld and the configs in /etc/slurm are kept, so the next start resumes.
# Running it when nothing runs is fine.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/slurm/local-cluster-lib.sh
source "$SCRIPT_DIR/local-cluster-lib.sh"

usage() { die "usage: $0 [--all]"; }

stop_service() {
  local name=$1 pidfile=$2 program=$3
  if systemd_booted; then
    say "stopping $name (systemctl stop $name)"
    systemctl stop "$name"
  else
    stop_by_pidfile "$name" "$pidfile" "$program"
  fi
}

stop_mariadb() {
  if systemd_booted; then
    say "stopping mariadb (systemctl stop mariadb)"
    systemctl stop mariadb
  elif mysqladmin --silent ping >/dev/null 2>&1; then
    say "stopping mariadb"
    mysqladmin shutdown
  else
    say "mariadb is not running"
  fi
}

main() {
  local stop_all=""
  case "${1:-}" in
    "") ;;
    --all) stop_all=yes ;;
    *) usage ;;
  esac
  become_root "$@"
  stop_service slurmd /run/slurmd.pid slurmd
  stop_service slurmctld /run/slurmctld.pid slurmctld
  stop_service slurmdbd /run/slurmdbd.pid slurmdbd
  if [[ -n $stop_all ]]; then
    stop_mariadb
    stop_service munge /run/munge/munged.pid munged
  fi
  say "stopped"
}

main "$@"
