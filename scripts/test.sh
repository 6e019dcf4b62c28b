#!/usr/bin/env bash
# Install what the test suite needs on a fresh machine, then run all of it.
# Extra arguments go to pytest (e.g. scripts/test.sh -k jobs -x).
set -euo pipefail
cd "$(dirname "$0")/.."

missing=()
command -v tmux >/dev/null 2>&1 || missing+=(tmux)   # the TUI is tried in a real terminal
[ -x /usr/sbin/sshd ] || missing+=(openssh-server)    # the fleet tests talk to real sshd on loopback
command -v ssh-keygen >/dev/null 2>&1 || missing+=(openssh-client)
# the Slurm stories run against a real slurmctld and slurmd on localhost (tests/slurm.py)
[ -x /usr/sbin/slurmctld ] || missing+=(slurmctld)
[ -x /usr/sbin/slurmd ] || missing+=(slurmd)
command -v sbatch >/dev/null 2>&1 || missing+=(slurm-client)
[ -x /usr/sbin/munged ] || missing+=(munge)
if ((${#missing[@]})); then
    sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
    echo "installing ${missing[*]} (apt)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
fi

python3 -c 'import sys; sys.exit(sys.version_info < (3, 11))' || { echo "mlfleet needs Python 3.11 or newer" >&2; exit 2; }
[ -x .venv/bin/python ] || python3 -m venv .venv
# adapters: torch (CPU build, pinned), Lightning and transformers, so the adapter tests run, never skip.
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test,adapters]'
export MLFLEET_REQUIRE_ADAPTERS=1
# Several workers (pytest-xdist): the stories wait on sshd, controllers and Slurm more than they compute,
# so twice the cores, 4 to 8. MLFLEET_TEST_WORKERS overrides it; a later -n in "$@" wins (-n 0: one process).
# Then the full_load stories (200 requests/s, no request may fail) alone, one at a time: beside other workers
# their servers starve. Exit 5 of one part is "none of its tests were asked for"; the first failure's code wins.
cores=$(nproc 2>/dev/null || echo 2)
workers=$((cores * 2)); ((workers < 4)) && workers=4; ((workers > 8)) && workers=8
status=0
MLFLEET_TEST_PART=parallel .venv/bin/python -m pytest -n "${MLFLEET_TEST_WORKERS:-$workers}" "$@" || status=$?
alone=0
MLFLEET_TEST_PART=alone .venv/bin/python -m pytest "$@" -n 0 || alone=$?
if ((status == 5 && alone == 5)); then exit 5; fi  # neither part had a test to run
if ((status != 0 && status != 5)); then exit "$status"; fi
if ((alone == 5)); then exit 0; fi
exit "$alone"
