"""A throw-away single-node Slurm cluster (munged + slurmctld + slurmd from Debian's munge and
slurm-wlm packages) for tests: every file, socket and port of its own, under one folder.

`start(root)` returns a SlurmCluster whose `env` points Slurm's commands (sbatch, squeue) at it,
or raises ClusterUnavailable with the reason (not installed, not root, a daemon did not start).
"""
from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

REQUIRED_COMMANDS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "sinfo", "scontrol")
INSTALL_HINT = "apt-get install slurm-wlm munge (.ci/run does)"


class ClusterUnavailable(RuntimeError):
    """Slurm cannot run here; the message says why."""


def _free_ports(count: int) -> list[int]:
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        return " | ".join(path.read_text(errors="replace").strip().splitlines()[-lines:])
    except OSError:
        return "(no log)"


class SlurmCluster:
    def __init__(self, root: Path):
        self.root = root
        self.conf = root / "slurm.conf"
        self.munge_socket = root / "munge" / "munge.socket"
        self.processes: list[subprocess.Popen] = []
        self.env = {**os.environ, "SLURM_CONF": str(self.conf)}
        self.host = socket.gethostname().split(".")[0]

    def _write_config(self) -> None:
        for sub in ("munge", "state", "spool", "log"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        (self.root / "munge").chmod(0o700)
        key = self.root / "munge" / "munge.key"
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        ctld_port, slurmd_port = _free_ports(2)
        cpus = os.cpu_count() or 1
        self.conf.write_text(f"""\
ClusterName=vjepa2test
SlurmctldHost={self.host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket={self.munge_socket}
CredType=cred/munge
StateSaveLocation={self.root}/state
SlurmdSpoolDir={self.root}/spool
SlurmctldPidFile={self.root}/slurmctld.pid
SlurmdPidFile={self.root}/slurmd.pid
SlurmctldLogFile={self.root}/log/slurmctld.log
SlurmdLogFile={self.root}/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
SchedulerType=sched/builtin
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
MpiDefault=none
ReturnToService=2
SlurmdParameters=config_overrides
GresTypes=gpu
MinJobAge=3600
NodeName={self.host} NodeAddr=127.0.0.1 CPUs={cpus} RealMemory=4000 Gres=gpu:4 State=UNKNOWN
PartitionName=debug Nodes={self.host} Default=YES MaxTime=INFINITE State=UP
""")
        # Four GPU resources backed by plain files: the template's --gres=gpu:1 is accepted on
        # this GPU-less node, and the jobs run on the CPU (DEVICE=cpu).
        for i in range(4):  # stand-ins for /dev/nvidia<i>: Slurm only checks they exist
            (self.root / f"fake_gpu{i}").touch()
        (self.root / "gres.conf").write_text(f"NodeName={self.host} Name=gpu File={self.root}/fake_gpu[0-3]\n")

    def _spawn(self, name: str, args: list[str]) -> None:
        log = open(self.root / "log" / f"{name}.out", "wb")
        self.processes.append(subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                               start_new_session=True))

    def _wait_for(self, what: str, ready, timeout: float, log: Path) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ready():
                return
            for proc in self.processes:
                if proc.poll() is not None:
                    raise ClusterUnavailable(f"{Path(proc.args[0]).name} exited ({proc.returncode}): {_tail(log)}")
            time.sleep(0.3)
        raise ClusterUnavailable(f"{what} not ready after {timeout:.0f} s: {_tail(log)}")

    def start(self) -> "SlurmCluster":
        self._write_config()
        munge_dir = self.root / "munge"
        self._spawn("munged", ["munged", "--foreground", "--force", f"--socket={self.munge_socket}",
                               f"--key-file={munge_dir / 'munge.key'}", f"--pid-file={munge_dir / 'munged.pid'}",
                               f"--seed-file={munge_dir / 'munged.seed'}", f"--log-file={self.root / 'log' / 'munged.log'}"])
        self._wait_for("munged", self.munge_socket.exists, 20, self.root / "log" / "munged.out")
        self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", str(self.conf)])
        self._spawn("slurmd", ["slurmd", "-D", "-N", self.host, "-f", str(self.conf)])
        self._wait_for("the Slurm node", self._node_idle, 60, self.root / "log" / "slurmd.log")
        return self

    def _node_idle(self) -> bool:
        proc = subprocess.run(["sinfo", "-h", "-N", "-o", "%T"], env=self.env, capture_output=True, text=True)
        return proc.returncode == 0 and proc.stdout.strip().startswith("idle")

    def sbatch(self, *args: str, cwd: Path, env: dict, timeout: float = 600) -> tuple[str, int]:
        """Submit, wait until every task has ended, return (job id, highest task exit status).
        (Polls squeue twice a second: `sbatch --wait` backs off to 10 s between polls.)"""
        env = {**env, "SLURM_CONF": str(self.conf)}
        proc = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, env=env, capture_output=True, text=True,
                              timeout=60)
        if proc.returncode != 0:
            raise RuntimeError(f"sbatch failed ({proc.returncode}): {proc.stderr.strip()}")
        job = proc.stdout.strip().split(";")[0]
        deadline = time.monotonic() + timeout
        while subprocess.run(["squeue", "-h", "-j", job, "-o", "%i"], env=env, capture_output=True,
                             text=True).stdout.strip():
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job} still queued or running after {timeout:.0f} s")
            time.sleep(0.5)
        shown = subprocess.run(["scontrol", "-o", "show", "job", job], env=env, capture_output=True, text=True)
        codes = [int(c) for c in re.findall(r"\bExitCode=(\d+):", shown.stdout)]
        if not codes:
            raise RuntimeError(f"no exit status for job {job}: {shown.stdout.strip() or shown.stderr.strip()}")
        return job, max(codes)

    def stop(self) -> None:
        for proc in reversed(self.processes):  # only the daemons started here, by their process
            if proc.poll() is None:
                proc.terminate()
        for proc in reversed(self.processes):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()


def start(root: Path) -> SlurmCluster:
    missing = [name for name in REQUIRED_COMMANDS if shutil.which(name) is None]
    if missing:
        raise ClusterUnavailable(f"{', '.join(missing)} not installed: {INSTALL_HINT}")
    if os.geteuid() != 0:
        raise ClusterUnavailable("the Slurm daemons need root here (SlurmUser=root); run the tests as root")
    cluster = SlurmCluster(root)
    try:
        return cluster.start()
    except BaseException:
        cluster.stop()
        raise
