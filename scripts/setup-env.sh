#!/usr/bin/env bash
# Prepare this machine for slurm-k8s-bridge: Debian's Slurm 22.05 + munge + PMIx (when
# missing), and a virtualenv at .venv with the package and its test dependencies.
# Idempotent: reruns only install what is missing. Needs root for apt-get.
set -euo pipefail
cd "$(dirname "$0")/.."

need_apt=()
for cmd in slurmctld slurmd sbatch munged ip lua5.3; do
	command -v "$cmd" >/dev/null 2>&1 || need_apt+=("$cmd")
done
[ -f /usr/include/slurm/slurm.h ] || need_apt+=(headers)
[ -f /usr/include/pmix.h ] || [ -n "$(ls /usr/lib/*/pmix*/include/pmix.h 2>/dev/null)" ] || need_apt+=(pmix)
if [ "${#need_apt[@]}" -gt 0 ]; then
	echo "==> installing Debian packages (missing: ${need_apt[*]})"
	if [ "$(id -u)" -ne 0 ]; then
		echo "error: Slurm packages are missing and installing them needs root" >&2
		exit 1
	fi
	export DEBIAN_FRONTEND=noninteractive
	apt-get update -qq
	apt-get install -y -qq slurmctld slurmd slurm-client libslurm-dev munge libpmix-dev \
		slurm-wlm-basic-plugins iproute2 lua5.3 util-linux >/dev/null
fi

# slurmdbd + MariaDB for the slurm tier's accounting mode (QOS and association limits,
# tests/slurm/test_limits.py): binaries only, no system database or service is set up;
# the harness runs its own mariadbd and slurmdbd under each test cluster's directory.
need_acct=()
for cmd in slurmdbd mariadbd mariadb-install-db mariadb; do
	command -v "$cmd" >/dev/null 2>&1 || need_acct+=("$cmd")
done
[ -f /usr/lib/x86_64-linux-gnu/slurm-wlm/accounting_storage_mysql.so ] || need_acct+=(mysql-plugin)
if [ "${#need_acct[@]}" -gt 0 ]; then
	if [ "$(id -u)" -ne 0 ]; then
		echo "note: slurmdbd/MariaDB missing (${need_acct[*]}) and not root: the accounting tests will skip" >&2
	else
		echo "==> installing slurmdbd and MariaDB (missing: ${need_acct[*]})"
		export DEBIAN_FRONTEND=noninteractive
		apt-get install -y -qq --no-install-recommends slurmdbd slurm-wlm-mysql-plugin \
			mariadb-server-core mariadb-client-core >/dev/null 2>&1 || {
			apt-get update -qq
			apt-get install -y -qq --no-install-recommends slurmdbd slurm-wlm-mysql-plugin \
				mariadb-server-core mariadb-client-core >/dev/null
		}
	fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
	echo "==> creating .venv with $($PYTHON --version)"
	"$PYTHON" -m venv .venv
fi
echo "==> installing slurm-k8s-bridge into .venv"
.venv/bin/pip install -q --disable-pip-version-check -e '.[test]'
echo "==> ready: $(.venv/bin/slurm-k8s-bridge --version 2>/dev/null || echo slurm-k8s-bridge)"
