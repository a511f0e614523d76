#!/usr/bin/env bash
# Stop the SLURM cluster that start-local-cluster.sh started, with one node or several.
#
#   sudo bash cluster/slurm/stop-local-cluster.sh           # stop the SLURM daemons, remove the nodes
#   sudo bash cluster/slurm/stop-local-cluster.sh --all     # ... then MariaDB and munged as well
#   sudo bash cluster/slurm/stop-local-cluster.sh --purge   # ... and delete every file the start wrote
#
# The default stops every node's slurmd, slurmctld and slurmdbd, kills what still runs in the
# further nodes' namespaces, and removes those namespaces, their veth pairs, the bridge, the nodes'
# names in /etc/hosts, and their pid files and spool folders. MariaDB and munged stay up because other programs on the
# machine may use them; the accounting database, the job state under /var/spool/slurmctld, the
# logs and the configs in /etc/slurm are kept, so the next start resumes quickly. --purge removes
# those too (the packages and the munge key stay). Running it when nothing runs, or twice, is fine.
set -euo pipefail

SCRIPT_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=cluster/slurm/local-cluster-lib.sh
source "$SCRIPT_DIR/local-cluster-lib.sh"

usage() { die "usage: $0 [--all | --purge]"; }

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

drop_accounting_database() {
  if mysqladmin --silent ping >/dev/null 2>&1; then
    say "dropping the accounting database slurm_acct_db and the database user slurm"
    mysql --batch -e "DROP DATABASE IF EXISTS slurm_acct_db; DROP USER IF EXISTS 'slurm'@'localhost';"
  else
    say "MariaDB is not running: the accounting database cannot be dropped (start MariaDB and run --purge again)"
  fi
}

remove_written_files() {
  say "removing /etc/slurm/slurm.conf, /etc/slurm/slurmdbd.conf, /var/spool/slurmctld and /var/log/slurm"
  rm -f /etc/slurm/slurm.conf /etc/slurm/slurmdbd.conf
  rm -rf /var/spool/slurmctld /var/log/slurm
}

main() {
  local stop_all="" purge=""
  case "${1:-}" in
    "") ;;
    --all) stop_all=yes ;;
    --purge) stop_all=yes purge=yes ;;
    *) usage ;;
  esac
  become_root "$@"
  if systemd_booted; then
    systemctl stop slurmd 2>/dev/null || true
  fi
  stop_all_slurmd
  stop_service slurmctld /run/slurmctld.pid slurmctld
  stop_service slurmdbd /run/slurmdbd.pid slurmdbd
  remove_node_links
  remove_node_hosts
  rm -rf /var/spool/slurmd /var/spool/slurmd-*
  if [[ -n $purge ]]; then
    drop_accounting_database
    remove_written_files
  fi
  if [[ -n $stop_all ]]; then
    stop_mariadb
    stop_service munge /run/munge/munged.pid munged
  fi
  say "stopped"
}

main "$@"
