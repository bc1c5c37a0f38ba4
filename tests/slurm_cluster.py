"""A real single-node Slurm for the tests: install if missing, start, wait for idle, stop.

Debian 12 packages (``slurmctld slurmd slurm-client munge``; ``.ci/install-slurm.sh``)
run as root without systemd. The config, state, spool, pid and log files live in
a temporary directory; the controller and node daemons listen on free ports, so
the cluster does not collide with another one on the machine. munged is started
only when ``munge -n`` does not already work, and only one we started is killed.
:func:`start` raises :class:`SlurmStartError` with the reason (and the daemons'
log tails) when anything fails; :meth:`SlurmCluster.stop` cancels every job, runs
``scontrol shutdown``, kills our munged and verifies that none of the daemons is
left.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
INSTALL = REPO / ".ci" / "install-slurm.sh"
BINARIES = ("slurmctld", "slurmd", "sbatch", "squeue", "scontrol", "scancel", "sinfo", "munged", "munge")
MUNGED_PID = Path("/run/munge/munged.pid")


class SlurmStartError(RuntimeError):
    """Slurm could not be installed or started; the message says why."""


@dataclass
class SlurmCluster:
    root: Path
    conf: Path
    env: dict[str, str]
    node: str
    munged_pid: int | None = None  # set only when this cluster started munged
    started: list[str] = field(default_factory=list)

    def run(self, *cmd: str, check: bool = True, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(cmd, env=self.env, capture_output=True, text=True, check=check, timeout=timeout)

    def pid(self, daemon: str) -> int | None:
        try:
            return int((self.root / f"{daemon}.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def logs(self, lines: int = 15) -> str:
        out = []
        for name in ("slurmctld.log", "slurmd.log"):
            p = self.root / name
            if p.is_file():
                tail = p.read_text(errors="replace").splitlines()[-lines:]
                out.append(f"--- {p}\n" + "\n".join(tail))
        return "\n".join(out)

    def stop(self) -> None:
        """Cancel all jobs, shut the daemons down, kill our munged; raise if anything survives."""
        problems: list[str] = []
        if self.started:
            try:
                self.run("scancel", "--full", "--quiet", "-u", pwd.getpwuid(os.getuid()).pw_name, check=False)
                _wait(lambda: not self.run("squeue", "-h", check=False).stdout.strip(), 20)
            except (subprocess.SubprocessError, OSError) as err:
                problems.append(f"scancel: {err}")
            pids = {d: self.pid(d) for d in ("slurmctld", "slurmd")}
            try:
                self.run("scontrol", "shutdown", check=False)
            except (subprocess.SubprocessError, OSError) as err:
                problems.append(f"scontrol shutdown: {err}")
            for daemon, pid in pids.items():
                if pid is not None and not _wait(lambda p=pid: not _alive(p), 15):
                    problems.append(f"{daemon} (pid {pid}) ignored scontrol shutdown; killed")
                    _kill(pid)
            self.started.clear()
        if self.munged_pid is not None:
            _kill(self.munged_pid, signal.SIGTERM)
            if _alive(self.munged_pid):
                problems.append(f"munged (pid {self.munged_pid}) did not stop")
            self.munged_pid = None
        if problems:
            raise RuntimeError("stopping the test Slurm: " + "; ".join(problems))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:  # a zombie child counts as gone
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        return state != "Z"
    except (OSError, IndexError):
        return True


def _kill(pid: int, sig: int = signal.SIGTERM) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        return
    if not _wait(lambda: not _alive(pid), 10):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            return
        _wait(lambda: not _alive(pid), 5)


def _wait(pred, timeout: float, step: float = 0.2) -> bool:  # type: ignore[no-untyped-def]
    end = time.monotonic() + timeout
    while True:
        if pred():
            return True
        if time.monotonic() > end:
            return False
        time.sleep(step)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def ensure_installed() -> None:
    missing = [b for b in BINARIES if shutil.which(b) is None and not Path("/usr/sbin", b).exists()]
    if not missing:
        return
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        raise SlurmStartError(
            f"Slurm is not installed (missing {', '.join(missing)}) and cannot be installed "
            "here (needs root and apt-get); run .ci/install-slurm.sh as root"
        )
    proc = subprocess.run(["sh", str(INSTALL)], capture_output=True, text=True, timeout=900, check=False)
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        raise SlurmStartError(f"{INSTALL} failed (exit {proc.returncode}): " + " | ".join(tail))


def _munge_works() -> bool:
    if shutil.which("munge") is None or shutil.which("unmunge") is None:
        return False
    try:
        cred = subprocess.run(["munge", "-n"], capture_output=True, timeout=5, check=False)
        if cred.returncode != 0:
            return False
        return (
            subprocess.run(["unmunge"], input=cred.stdout, capture_output=True, timeout=5, check=False).returncode == 0
        )
    except (subprocess.SubprocessError, OSError):
        return False


def _start_munged() -> int | None:
    """Start munged as the munge user unless one works already; its pid if we started it."""
    if _munge_works():
        return None
    if os.geteuid() != 0:
        raise SlurmStartError("munge does not work and starting munged needs root")
    if not Path("/etc/munge/munge.key").is_file():
        subprocess.run(["mungekey", "--create"], check=False, capture_output=True)
        shutil.chown("/etc/munge/munge.key", "munge", "munge")
    Path("/run/munge").mkdir(parents=True, exist_ok=True)
    shutil.chown("/run/munge", "munge", "munge")
    os.chmod("/run/munge", 0o755)
    proc = subprocess.run(
        ["runuser", "-u", "munge", "--", "/usr/sbin/munged"], capture_output=True, text=True, timeout=15, check=False
    )
    if proc.returncode != 0:
        raise SlurmStartError(f"munged failed to start (exit {proc.returncode}): {proc.stderr.strip()}")
    if not _wait(_munge_works, 10):
        raise SlurmStartError("munged started but munge -n | unmunge still fails")
    try:
        return int(MUNGED_PID.read_text().strip())
    except (OSError, ValueError):
        raise SlurmStartError(f"munged started but wrote no pid to {MUNGED_PID}") from None


def _hostname() -> str:
    host = socket.gethostname().split(".")[0]
    try:
        socket.gethostbyname(host)
    except OSError:
        if os.geteuid() != 0:
            raise SlurmStartError(f"the hostname {host!r} does not resolve; add it to /etc/hosts") from None
        with open("/etc/hosts", "a", encoding="ascii") as f:
            f.write(f"\n127.0.0.1 {host}\n")
    return host


def _conf(root: Path, host: str) -> str:
    cpus = len(os.sched_getaffinity(0))  # what nproc says
    return "\n".join(
        [
            "ClusterName=qgcaltest",
            f"SlurmctldHost={host}",
            f"SlurmctldPort={_free_port()}",
            f"SlurmdPort={_free_port()}",
            "SlurmUser=root",
            "SlurmdUser=root",
            "AuthType=auth/munge",
            "CredType=cred/munge",
            f"StateSaveLocation={root}/state",
            f"SlurmdSpoolDir={root}/spool",
            f"SlurmctldPidFile={root}/slurmctld.pid",
            f"SlurmdPidFile={root}/slurmd.pid",
            f"SlurmctldLogFile={root}/slurmctld.log",
            f"SlurmdLogFile={root}/slurmd.log",
            "ProctrackType=proctrack/linuxproc",
            "TaskPlugin=task/none",
            "JobAcctGatherType=jobacct_gather/none",
            "AccountingStorageType=accounting_storage/none",
            "JobCompType=jobcomp/none",
            "SelectType=select/cons_tres",
            "SelectTypeParameters=CR_CPU",
            "ReturnToService=2",
            "MailProg=/bin/true",
            "MpiDefault=none",
            "KillWait=5",
            "MaxArraySize=32",  # small, so that the check against it is tested cheaply
            # start the next array task as soon as one ends (defaults wait seconds to batch decisions)
            "SchedulerParameters=sched_min_interval=0,batch_sched_delay=0,bf_interval=1",
            f"NodeName={host} CPUs={cpus} RealMemory=1000 State=UNKNOWN",
            "PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP",
            "",
        ]
    )


def start(root: Path, *, timeout: float = 60) -> SlurmCluster:
    """Install if needed, start munged (if needed), slurmctld and slurmd; wait until the node is idle."""
    ensure_installed()
    host = _hostname()
    root.mkdir(parents=True, exist_ok=True)
    for d in ("state", "spool"):
        (root / d).mkdir(exist_ok=True)
    conf = root / "slurm.conf"
    conf.write_text(_conf(root, host))
    env = {**os.environ, "SLURM_CONF": str(conf)}
    cluster = SlurmCluster(root, conf, env, host)
    try:
        cluster.munged_pid = _start_munged()
        for daemon, args in (("slurmctld", ["-c"]), ("slurmd", [])):
            proc = subprocess.run([daemon, *args], env=env, capture_output=True, text=True, timeout=30, check=False)
            cluster.started.append(daemon)
            if proc.returncode != 0:
                raise SlurmStartError(
                    f"{daemon} failed to start (exit {proc.returncode}): {proc.stderr.strip()}\n{cluster.logs()}"
                )

        def idle() -> bool:
            out = cluster.run("sinfo", "-h", "-o", "%T", check=False).stdout.split()
            return out == ["idle"]

        if not _wait(idle, timeout, 0.5):
            state = cluster.run("sinfo", "-h", "-o", "%T %E", check=False).stdout.strip()
            raise SlurmStartError(
                f"the node did not become idle within {timeout:.0f} s (sinfo: {state!r})\n{cluster.logs()}"
            )
    except BaseException:
        try:
            cluster.stop()
        except RuntimeError:
            pass
        raise
    return cluster
