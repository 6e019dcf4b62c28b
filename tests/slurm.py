"""A real Slurm cluster of one node on localhost: munged, slurmctld and slurmd (Debian's slurm-wlm 22.05).

Why these settings (checked on Debian 12): ``select/cons_tres`` with
``DefMemPerCPU``, or each job takes the node's whole memory and jobs run one
at a time; two fake GPUs need ``gres.conf`` with ``AutoDetect=off`` and
device files (``mknod /dev/fakegpuN c 1 3``: a GRES count without files
puts the node in INVALID state); no slurmdbd, so ``jobcomp/filetxt`` and
``scontrol`` are what is left of a finished job; ``MinJobAge`` small so
finished jobs leave ``squeue`` in seconds, not 300 s.

Everything lives in a temporary folder of its own (its own munge socket and
key, its own ports, ``SLURM_CONF`` pointing at it), and the daemons are
stopped by their pid files: nothing system-wide is started or touched but
the two device files. If the daemons cannot start, the fixture fails and
says why: these tests never skip.

Under pytest-xdist (scripts/test.sh runs the suite on several workers) every
test that uses ``slurm_cluster`` is put in the ``xdist_group("slurm")`` by
tests/conftest.py (SERIAL_GROUPS), so all Slurm stories run on one worker,
one cluster at a time: each cluster's node is named after this machine
(slurmd -N hostname) and they share /dev/fakegpuN. A new Slurm test file
gets this by using the fixture (``slurm_cluster = slurm_fixtures.slurm_cluster``
as in tests/test_slurm.py); a helper that starts a cluster itself, without
the fixture, must say ``pytestmark = pytest.mark.xdist_group("slurm")``.
The cluster stays module-scoped (a fresh one per file, about a few seconds):
stories read the controller's whole job log (``submitted_names``), so one
file's jobs must not be seen by the next.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

GPU_DEVICES = [Path("/dev/fakegpu0"), Path("/dev/fakegpu1")]
NODE_CPUS = 4
NODE_MEMORY_MB = 4000


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class SlurmCluster:
    root: Path
    node: str
    partition: str = "debug"
    env: dict[str, str] = field(default_factory=dict)

    @property
    def conf(self) -> Path:
        return self.root / "slurm.conf"

    def run(self, *argv: str, check: bool = True) -> str:
        """A Slurm command against this cluster, its stdout."""
        done = subprocess.run(list(argv), env={**os.environ, **self.env}, capture_output=True, text=True, timeout=30)
        if check and done.returncode != 0:
            raise AssertionError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
        return done.stdout

    def submitted_names(self) -> list[str]:
        """Job names of every job the controller ever accepted (its log), so a double submit is seen.

        squeue is read before jobcomp, and jobs are told apart by id: a job that ends between the two reads
        is in squeue's answer (so never missed), and one seen in both is one job (so never counted twice).
        """
        jobs = dict(line.split("|", 1) for line in self.run("squeue", "-h", "-o", "%A|%j").split())
        for fields in self._jobcomp():
            jobs[fields.get("JobId", "")] = fields.get("Name", "")
        return list(jobs.values())

    def _jobcomp(self) -> list[dict[str, str]]:
        path = self.root / "jobcomp.txt"
        lines = path.read_text().splitlines() if path.exists() else []
        return [dict(word.split("=", 1) for word in line.split() if "=" in word) for line in lines]

    def array_tasks(self) -> dict[tuple[str, str], list[int]]:
        """Every job array the controller ran or queues, as (name, array job id) -> its task ids (squeue -r,
        then jobcomp: a task that ends between the two reads is in one of them).

        A task cancelled while it was still pending never reaches jobcomp.
        """
        tasks: dict[tuple[str, str], set[int]] = {}
        for line in self.run("squeue", "-h", "-r", "-o", "%j|%F|%K").split():
            name, array, task = line.split("|")
            if task.isdigit():
                tasks.setdefault((name, array), set()).add(int(task))
        for fields in self._jobcomp():
            if fields.get("ArrayTaskId", "").isdigit():
                tasks.setdefault((fields["Name"], fields["ArrayJobId"]), set()).add(int(fields["ArrayTaskId"]))
        return {key: sorted(ids) for key, ids in tasks.items()}

    def log(self) -> str:
        parts = []
        for name in ("slurmctld.log", "slurmd.log", "munged.log"):
            path = self.root / name
            if path.exists():
                parts.append(f"--- {name}\n" + "\n".join(path.read_text(errors="replace").splitlines()[-30:]))
        return "\n".join(parts)


def _config(root: Path, node: str) -> str:
    return f"""\
ClusterName=mlfleettest
SlurmctldHost={node}(127.0.0.1)
SlurmctldPort={_free_port()}
SlurmdPort={_free_port()}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={root}/munge.socket
CredType=cred/munge
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={root}/jobcomp.txt
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=100
GresTypes=gpu
MinJobAge=2
ReturnToService=2
SchedulerParameters=sched_interval=1
MpiDefault=none
SlurmdParameters=config_overrides
NodeName={node} NodeAddr=127.0.0.1 CPUs={NODE_CPUS} RealMemory={NODE_MEMORY_MB} Gres=gpu:fake:2 State=UNKNOWN
PartitionName=debug Nodes={node} Default=YES MaxTime=INFINITE State=UP
"""


def _stop(pid_file: Path) -> None:
    try:
        pid = int(pid_file.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    for _ in range(100):
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


def start_cluster() -> SlurmCluster:
    for tool in ("munged", "slurmctld", "slurmd", "sinfo", "sbatch"):
        if shutil.which(tool) is None and not Path(f"/usr/sbin/{tool}").exists():
            pytest.fail(f"{tool} is not installed; scripts/test.sh installs slurmctld slurmd slurm-client munge")
    if os.geteuid() != 0:
        pytest.fail("the Slurm tests start slurmd, which must run as root (CI and scripts/test.sh run as root)")
    root = Path(tempfile.mkdtemp(prefix="mlfleet-slurm-"))
    root.chmod(0o755)  # munged wants its socket's folder searchable by all
    node = socket.gethostname().split(".")[0]
    cluster = SlurmCluster(root, node, env={"SLURM_CONF": str(root / "slurm.conf")})
    for sub in ("state", "spool"):
        (root / sub).mkdir()
    for dev in GPU_DEVICES:
        if not dev.exists():
            try:
                os.mknod(dev, 0o666 | 0o020000, os.makedev(1, 3))  # a character device like /dev/null
            except FileExistsError:  # another test run on this machine made it between the check and here
                pass
    (root / "slurm.conf").write_text(_config(root, node))
    (root / "gres.conf").write_text("AutoDetect=off\n" + "".join(
        f"NodeName={node} Name=gpu Type=fake File={dev}\n" for dev in GPU_DEVICES))
    (root / "cgroup.conf").write_text("CgroupPlugin=autodetect\n")
    key = root / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o600)
    steps = [
        ["/usr/sbin/munged", "--force", f"--socket={root}/munge.socket", f"--key-file={key}",
         f"--pid-file={root}/munged.pid", f"--log-file={root}/munged.log", f"--seed-file={root}/munged.seed"],
        ["/usr/sbin/slurmctld", "-f", str(root / "slurm.conf"), "-i"],
        ["/usr/sbin/slurmd", "-f", str(root / "slurm.conf"), "-N", node],
    ]
    try:
        for argv in steps:
            done = subprocess.run(argv, env={**os.environ, **cluster.env}, capture_output=True, text=True, timeout=30)
            if done.returncode != 0:
                raise RuntimeError(f"{argv[0]} did not start ({done.returncode}): {done.stderr.strip()}")
            time.sleep(0.3)
        deadline = time.monotonic() + 60
        state = ""
        while time.monotonic() < deadline:
            state = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env={**os.environ, **cluster.env},
                                   capture_output=True, text=True, timeout=10).stdout.strip()
            if state == "idle":
                return cluster
            time.sleep(0.5)
        raise RuntimeError(f"the node did not become idle in 60 s (sinfo says {state!r})")
    except Exception as exc:
        why = f"{exc}\n{cluster.log()}"
        stop_cluster(cluster)
        pytest.fail(f"the Slurm test cluster could not start: {why}")


def stop_cluster(cluster: SlurmCluster) -> None:
    subprocess.run(["scancel", "--full", "-u", "root"], env={**os.environ, **cluster.env}, capture_output=True,
                   timeout=30)
    for name in ("slurmd.pid", "slurmctld.pid", "munged.pid"):
        _stop(cluster.root / name)
    shutil.rmtree(cluster.root, ignore_errors=True)


@pytest.fixture(scope="module")
def slurm_cluster():
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)
