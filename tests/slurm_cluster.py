"""A throw-away single-node SLURM cluster (munged + slurmctld + slurmd) on this machine, for
tests/test_slurm.py: the workflow is submitted through profiles/slurm to a real SLURM.

Stdlib only, no systemd needed. Tested with Debian 12's slurm-wlm 22.05.8 and munge 0.5.15
(`apt-get install -y --no-install-recommends slurmctld slurmd slurm-client munge`; .ci/run does it).

    from slurm_cluster import ensure_installed, cluster, run_with_sigint_timeout

    ensure_installed()                    # ClusterError if the binaries are missing and cannot be installed
    with cluster("/tmp/somewhere") as h:  # about 1 s; h.env has SLURM_CONF
        subprocess.run(["sinfo"], env=h.env)

Every daemon this module starts runs in the foreground of its own session; its pid is recorded
(handle.pids and <workdir>/slurm_cluster_pids.json) and it is stopped by that pid only, never by
name. Pids left by a crashed earlier run in the same workdir are stopped at the next start, if
/proc/<pid>/exe is still the recorded binary. A munged that is already running and works is used,
not started, and not stopped.

Why the configuration looks the way it does (each point cost a hang or a failure):
- no slurmdbd: `sacct` cannot answer, so the profile uses `slurm-status-command: squeue`, and
  MinJobAge=300 keeps finished jobs visible to squeue (the plugin needs >= 3 x its first check delay);
- snakemake-executor-plugin-slurm-jobstep strips SLURM_CONF before the nested `srun` inside each
  job, so clients must find the config at a default place: /run/slurm/conf/slurm.conf is linked to
  ours while the cluster runs (refused if /etc/slurm/slurm.conf exists or a live cluster owns the link);
- proctrack/linuxproc + task/none: no cgroups, no cgroup.conf;
- SlurmUser=root: state, spool and logs live in a root-owned folder under the workdir;
- job ids restart at 1 on every start (fresh state): wipe old .snakemake/slurm_logs before a run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

BINARIES = ("munged", "munge", "unmunge", "slurmctld", "slurmd", "sinfo", "sbatch", "squeue", "scontrol", "srun")
APT_PACKAGES = ("slurmctld", "slurmd", "slurm-client", "munge")
PIDS_FILE = "slurm_cluster_pids.json"
PARTITION = "main"

MUNGE_RUN_DIR = Path("/run/munge")
MUNGE_SOCKET = MUNGE_RUN_DIR / "munge.socket.2"
MUNGE_KEY = Path("/etc/munge/munge.key")

# Where SLURM 22.05 client commands look for slurm.conf when SLURM_CONF is unset:
# /etc/slurm/slurm.conf, then /run/slurm/conf/slurm.conf (configless cache), then DNS SRV.
# snakemake-executor-plugin-slurm-jobstep 0.6.1 strips every SLURM_* variable except
# the job identity ones (SLURM_CONF included) before its nested `srun`, so that srun
# needs a default location: we symlink /run/slurm/conf/slurm.conf -> our slurm.conf.
ETC_SLURM_CONF = Path("/etc/slurm/slurm.conf")
CLIENT_CONF_LINK = Path("/run/slurm/conf/slurm.conf")


class ClusterError(RuntimeError):
    pass


@dataclasses.dataclass
class ClusterHandle:
    workdir: Path          # the parent dir given by the caller
    confdir: Path          # temp dir with slurm.conf, state, spool, logs
    conf: Path
    env: dict              # os.environ + SLURM_CONF; pass to every slurm client call
    nodename: str
    partition: str
    ctld_port: int
    slurmd_port: int
    client_conf_link: Path | None = None  # /run/slurm/conf/slurm.conf if we created it
    pids: dict = dataclasses.field(default_factory=dict)   # name -> pid (only daemons WE started)
    procs: dict = dataclasses.field(default_factory=dict)  # name -> Popen
    start_seconds: float = 0.0
    stopped: bool = False

    def logs(self, tail: int = 40) -> str:
        return _collect_logs(self.confdir, tail)


# --------------------------------------------------------------------------- install

_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin", "/sbin", "/bin"])


def _bin(name: str):
    """Absolute path of a binary; also looks in /usr/sbin (daemons live there, often not on PATH)."""
    return shutil.which(name, path=_SEARCH_PATH)


def _missing_binaries():
    return [b for b in BINARIES if _bin(b) is None]


def ensure_installed(verbose: bool = True) -> None:
    """Make sure munge + slurm binaries exist; apt-get install them if root."""
    missing = _missing_binaries()
    if not missing:
        return
    if os.geteuid() != 0:
        raise ClusterError(f"missing binaries {missing} and not root: "
                           f"apt-get install {' '.join(APT_PACKAGES)}")
    if _bin("apt-get") is None:
        raise ClusterError(f"missing binaries {missing} and no apt-get to install {' '.join(APT_PACKAGES)}")
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *APT_PACKAGES]
    if verbose:
        print("+", " ".join(cmd), flush=True)
    r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        if verbose:
            print("apt-get install failed; running apt-get update and retrying", flush=True)
        subprocess.run(["apt-get", "update"], env=env, capture_output=True, text=True, check=False)
        r = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if r.returncode != 0:
        raise ClusterError(f"apt-get install failed (rc={r.returncode}):\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
    missing = _missing_binaries()
    if missing:
        raise ClusterError(f"still missing after apt-get install: {missing}")


# --------------------------------------------------------------------------- helpers

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _free_ports(n: int) -> list:
    ports = set()
    while len(ports) < n:
        ports.add(_free_port())
    return sorted(ports)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # zombie? treat as dead
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _pid_exe(pid: int):
    try:
        return os.path.realpath(os.readlink(f"/proc/{pid}/exe"))
    except OSError:
        return None


def _terminate_pid(pid: int, proc=None, timeout: float = 10.0) -> None:
    """SIGTERM, wait, SIGKILL. Only the given pid."""
    if not pid_alive(pid):
        if proc is not None:
            proc.poll()
        return
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None:
            if proc.poll() is not None:
                return
        elif not pid_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    if proc is not None:
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            pass


def _tail(path: Path, n: int) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError as e:
        return f"<cannot read {path}: {e}>"
    return "\n".join(lines[-n:])


def _collect_logs(confdir: Path, tail: int = 40) -> str:
    out = []
    names = ["slurmctld.log", "slurmd.log", "slurmctld.stdout", "slurmd.stdout", "munged.stdout"]
    for name in names:
        p = confdir / name
        if p.exists():
            out.append(f"----- {p} (last {tail} lines) -----\n{_tail(p, tail)}")
    mlog = Path("/var/log/munge/munged.log")
    if mlog.exists():
        out.append(f"----- {mlog} (last {tail} lines) -----\n{_tail(mlog, tail)}")
    return "\n".join(out)


def _node_hw():
    """CPUs/topology/RealMemory as slurmd sees them (slurmd -C)."""
    hw = {}
    try:
        r = subprocess.run([_bin("slurmd") or "slurmd", "-C"], capture_output=True, text=True, timeout=30)
        first = r.stdout.splitlines()[0] if r.stdout else ""
        for tok in first.split():
            if "=" in tok:
                k, v = tok.split("=", 1)
                hw[k] = v
    except (OSError, subprocess.TimeoutExpired, IndexError):
        pass
    if "CPUs" not in hw:
        hw["CPUs"] = str(os.cpu_count() or 1)
    if "RealMemory" not in hw:
        with open("/proc/meminfo") as f:
            kb = int(next(l for l in f if l.startswith("MemTotal")).split()[1])
        hw["RealMemory"] = str(kb // 1024)
    return hw


def _munge_works() -> bool:
    try:
        enc = subprocess.run(["munge", "-n"], capture_output=True, timeout=5)
        if enc.returncode != 0:
            return False
        dec = subprocess.run(["unmunge"], input=enc.stdout, capture_output=True, timeout=5)
        return dec.returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def _write_pids(workdir: Path, handle_pids: dict, confdir: Path) -> None:
    data = {"confdir": str(confdir), "client_conf_link": str(CLIENT_CONF_LINK),
            "pids": {name: {"pid": pid, "exe": _pid_exe(pid)} for name, pid in handle_pids.items()}}
    tmp = workdir / (PIDS_FILE + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(workdir / PIDS_FILE)


def _kill_stale(workdir: Path) -> list:
    """Stop daemons recorded by an earlier run in this workdir (pid + exe must match)."""
    pf = workdir / PIDS_FILE
    killed = []
    if not pf.exists():
        return killed
    try:
        data = json.loads(pf.read_text())
    except (OSError, ValueError):
        pf.unlink(missing_ok=True)
        return killed
    # slurmd first, munged last
    order = {"slurmd": 0, "slurmctld": 1, "munged": 2}
    for name, info in sorted(data.get("pids", {}).items(), key=lambda kv: order.get(kv[0], 9)):
        pid, exe = info.get("pid"), info.get("exe")
        if not pid or not pid_alive(pid):
            continue
        cur = _pid_exe(pid)
        if exe and cur == exe:
            _terminate_pid(pid)
            killed.append((name, pid))
    # a client-conf symlink into the stale run's confdir
    confdir = data.get("confdir")
    if confdir and CLIENT_CONF_LINK.is_symlink() and os.readlink(CLIENT_CONF_LINK).startswith(confdir + "/"):
        CLIENT_CONF_LINK.unlink()
    pf.unlink(missing_ok=True)
    return killed


def _prune_confdirs(workdir: Path, keep: int) -> None:
    """Delete all but the newest `keep` old slurm-* confdirs (never one with a live slurmctld)."""
    dirs = sorted((d for d in workdir.glob("slurm-*") if d.is_dir()), key=lambda d: d.stat().st_mtime)
    for d in dirs[:max(0, len(dirs) - keep)]:
        if not _conf_is_live(d / "slurm.conf"):
            shutil.rmtree(d, ignore_errors=True)


# --------------------------------------------------------------------------- munge

def _start_munged(handle: ClusterHandle) -> None:
    """Reuse a working munged; otherwise start one as user munge (foreground, so we own the pid)."""
    if MUNGE_SOCKET.exists() and _munge_works():
        return  # someone else's munged works: use it, do not own it
    try:
        mu = pwd.getpwnam("munge")
    except KeyError:
        raise ClusterError("user 'munge' does not exist (is the munge package installed?)")
    if os.geteuid() != 0:
        raise ClusterError("munged is not running and we are not root, cannot start it")
    for d, mode in ((MUNGE_RUN_DIR, 0o755), (Path("/var/log/munge"), 0o700), (Path("/var/lib/munge"), 0o711)):
        d.mkdir(parents=True, exist_ok=True)
        os.chown(d, mu.pw_uid, mu.pw_gid)
        os.chmod(d, mode)
    MUNGE_KEY.parent.mkdir(parents=True, exist_ok=True)
    if not MUNGE_KEY.exists():
        mk = _bin("mungekey")
        if mk:
            subprocess.run([mk, "--create", "--keyfile", str(MUNGE_KEY)], check=True, capture_output=True)
        else:
            MUNGE_KEY.write_bytes(os.urandom(128))
    os.chown(MUNGE_KEY.parent, mu.pw_uid, mu.pw_gid)
    os.chmod(MUNGE_KEY.parent, 0o700)
    os.chown(MUNGE_KEY, mu.pw_uid, mu.pw_gid)
    os.chmod(MUNGE_KEY, 0o400)
    # stale socket / lock / pid from a dead munged: --force lets munged take over
    out = open(handle.confdir / "munged.stdout", "wb")
    proc = subprocess.Popen(
        [_bin("munged"), "--foreground", "--force", "--num-threads=2"],
        user=mu.pw_uid, group=mu.pw_gid, extra_groups=[],
        stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
        start_new_session=True, close_fds=True,
    )
    out.close()
    handle.procs["munged"] = proc
    handle.pids["munged"] = proc.pid
    _write_pids(handle.workdir, handle.pids, handle.confdir)
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise ClusterError(f"munged exited with rc={proc.returncode}")
        if MUNGE_SOCKET.exists() and _munge_works():
            return
        time.sleep(0.1)
    raise ClusterError("munged did not come up within 15 s")


# --------------------------------------------------------------------------- slurm.conf

def _write_conf(handle: ClusterHandle, hw: dict) -> None:
    c = handle.confdir
    topo = ""
    if all(k in hw for k in ("SocketsPerBoard", "CoresPerSocket", "ThreadsPerCore")):
        topo = (f" Boards={hw.get('Boards', 1)} SocketsPerBoard={hw['SocketsPerBoard']}"
                f" CoresPerSocket={hw['CoresPerSocket']} ThreadsPerCore={hw['ThreadsPerCore']}")
    conf = f"""\
# generated by tests/slurm_cluster.py
ClusterName=vlmbias-test
SlurmctldHost=localhost
SlurmctldPort={handle.ctld_port}
SlurmdPort={handle.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
MpiDefault=none
MailProg=/bin/true
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
DefMemPerCPU=500
SchedulerType=sched/backfill
ReturnToService=2
MinJobAge=300
SlurmctldTimeout=30
SlurmdTimeout=30
InactiveLimit=0
KillWait=5
Waittime=0
StateSaveLocation={c}/state
SlurmdSpoolDir={c}/spool
SlurmctldPidFile={c}/slurmctld.pid
SlurmdPidFile={c}/slurmd.pid
SlurmctldLogFile={c}/slurmctld.log
SlurmdLogFile={c}/slurmd.log
SlurmctldDebug=info
SlurmdDebug=info
PlugStackConfig={c}/plugstack.conf
NodeName={handle.nodename} NodeAddr=127.0.0.1 NodeHostname={handle.nodename} CPUs={hw['CPUs']}{topo} RealMemory={hw['RealMemory']} State=UNKNOWN
PartitionName={handle.partition} Nodes={handle.nodename} Default=YES MaxTime=INFINITE State=UP
"""
    (c / "state").mkdir(exist_ok=True)
    (c / "spool").mkdir(exist_ok=True)
    (c / "plugstack.conf").write_text("")
    handle.conf.write_text(conf)


# --------------------------------------------------------------------------- client conf link

def _conf_is_live(conf: Path) -> bool:
    """True if conf exists and the slurmctld pid file next to it names a live slurmctld."""
    pidfile = conf.parent / "slurmctld.pid"
    if not conf.exists() or not pidfile.exists():
        return False
    try:
        pid = int(pidfile.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return False
    return pid_alive(pid) and (_pid_exe(pid) or "").endswith("slurmctld")


def _link_client_conf(handle: ClusterHandle) -> None:
    if ETC_SLURM_CONF.exists():
        raise ClusterError(f"{ETC_SLURM_CONF} exists: client commands that lose SLURM_CONF (the "
                           "slurm-jobstep plugin's nested srun) would use it instead of our cluster")
    link = CLIENT_CONF_LINK
    if link.is_symlink():
        target = os.readlink(link)
        if target != str(handle.conf) and _conf_is_live(Path(target)):
            raise ClusterError(f"{link} -> {target} belongs to a running slurmctld; refusing to replace it")
        link.unlink()  # stale: left by a run that was not stopped
    elif link.exists():
        raise ClusterError(f"{link} is a regular file (a configless slurmd?); refusing to replace it")
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(handle.conf)
    handle.client_conf_link = link


def _unlink_client_conf(handle: ClusterHandle) -> None:
    link = handle.client_conf_link
    if link is not None and link.is_symlink() and os.readlink(link) == str(handle.conf):
        link.unlink()
    handle.client_conf_link = None


# --------------------------------------------------------------------------- start / stop

def _wait_node_idle(handle: ClusterHandle, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        for name, proc in handle.procs.items():
            if proc.poll() is not None:
                raise ClusterError(f"{name} (pid {proc.pid}) exited early with rc={proc.returncode}; "
                                   f"last sinfo: {last!r}")
        r = subprocess.run(["sinfo", "-h", "-N", "-o", "%N %T"], env=handle.env,
                           capture_output=True, text=True, timeout=15)
        last = (r.stdout + r.stderr).strip()
        if r.returncode == 0 and last:
            states = [ln.split()[-1] for ln in r.stdout.splitlines() if ln.strip()]
            if states and all(s == "idle" for s in states):
                return
        time.sleep(0.2)
    raise ClusterError(f"node not idle after {timeout:.0f} s; last sinfo output: {last!r}")


def start_cluster(workdir, timeout: float = 60.0, keep_old_confdirs: int = 3) -> ClusterHandle:
    """Start munged (if needed), slurmctld and slurmd; return when the node is idle.

    workdir: a directory (created if missing); a fresh temp dir inside it gets
    slurm.conf, state, spool and logs (kept after stop for inspection; only the newest
    `keep_old_confdirs` old ones are kept).  Raises ClusterError (with daemon logs) on failure.
    """
    t0 = time.monotonic()
    workdir = Path(workdir).resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    _kill_stale(workdir)
    _prune_confdirs(workdir, keep_old_confdirs)
    confdir = Path(tempfile.mkdtemp(prefix="slurm-", dir=workdir))
    os.chmod(confdir, 0o755)
    ctld_port, slurmd_port = _free_ports(2)
    conf = confdir / "slurm.conf"
    nodename = socket.gethostname().split(".")[0]
    handle = ClusterHandle(workdir=workdir, confdir=confdir, conf=conf,
                           env=dict(os.environ, SLURM_CONF=str(conf)),
                           nodename=nodename, partition=PARTITION,
                           ctld_port=ctld_port, slurmd_port=slurmd_port)
    try:
        _start_munged(handle)
        _write_conf(handle, _node_hw())
        _link_client_conf(handle)
        for name, args in (
            ("slurmctld", [_bin("slurmctld"), "-D", "-i", "-f", str(conf)]),
            ("slurmd", [_bin("slurmd"), "-D", "-f", str(conf), "-N", nodename]),
        ):
            out = open(confdir / f"{name}.stdout", "wb")
            proc = subprocess.Popen(args, env=handle.env, stdin=subprocess.DEVNULL,
                                    stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, close_fds=True)
            out.close()
            handle.procs[name] = proc
            handle.pids[name] = proc.pid
            _write_pids(workdir, handle.pids, confdir)
        _wait_node_idle(handle, timeout)
    except BaseException as e:
        logs = handle.logs()
        stop_cluster(handle)
        if isinstance(e, (ClusterError, OSError, subprocess.SubprocessError)):
            raise ClusterError(f"starting SLURM failed: {e}\n{logs}") from e
        raise
    handle.start_seconds = time.monotonic() - t0
    return handle


def stop_cluster(handle: ClusterHandle, cancel_jobs: bool = True) -> None:
    """Cancel leftover jobs, then stop slurmd, slurmctld, munged (only those we started) by pid."""
    if handle.stopped:
        return
    if cancel_jobs and "slurmctld" in handle.procs and handle.procs["slurmctld"].poll() is None:
        try:
            subprocess.run(["scancel", "--full", "--user", pwd.getpwuid(os.getuid()).pw_name],
                           env=handle.env, capture_output=True, timeout=10)
            # give slurmstepd a moment to tear jobs down before slurmd goes
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:
                r = subprocess.run(["squeue", "-h", "-t", "RUNNING,COMPLETING,PENDING", "-o", "%i"],
                                   env=handle.env, capture_output=True, text=True, timeout=10)
                if r.returncode != 0 or not r.stdout.strip():
                    break
                time.sleep(0.3)
        except (OSError, subprocess.TimeoutExpired):
            pass
    for name in ("slurmd", "slurmctld", "munged"):
        proc = handle.procs.get(name)
        if proc is not None:
            _terminate_pid(proc.pid, proc)
    _unlink_client_conf(handle)
    handle.stopped = True
    pf = handle.workdir / PIDS_FILE
    try:
        if json.loads(pf.read_text()).get("confdir") == str(handle.confdir):
            pf.unlink()
    except (OSError, ValueError):
        pass


@contextlib.contextmanager
def cluster(workdir, timeout: float = 60.0):
    h = start_cluster(workdir, timeout=timeout)
    try:
        yield h
    finally:
        stop_cluster(h)


def run_with_sigint_timeout(cmd, cwd, env, timeout: float, log_path, grace: float = 30.0):
    """Run cmd in its own process group, output to log_path. On timeout send SIGINT to the group:
    a snakemake stuck in the SLURM plugin's status loop ignores SIGTERM, while SIGINT makes it
    scancel its jobs and exit. SIGKILL after `grace` seconds. Returns (returncode, timed_out)."""
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
        try:
            return proc.wait(timeout), False
        except subprocess.TimeoutExpired:
            pass
        for sig, wait in ((signal.SIGINT, grace), (signal.SIGKILL, None)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(wait)
                break
            except subprocess.TimeoutExpired:
                continue
        return proc.returncode, True


def job_info(handle: ClusterHandle, job_id) -> dict:
    """`scontrol show job` as a dict (JobState, NumCPUs, MinMemoryNode, TimeLimit, ...); {} if unknown."""
    r = subprocess.run([_bin("scontrol") or "scontrol", "show", "job", "-o", str(job_id)], env=handle.env,
                       capture_output=True, text=True, timeout=15)
    if r.returncode != 0:
        return {}
    return dict(tok.split("=", 1) for tok in r.stdout.split() if "=" in tok)


if __name__ == "__main__":  # smoke test: python3 tests/slurm_cluster.py [workdir]
    import sys
    ensure_installed()
    wd = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="slurm-smoke-")
    with cluster(wd) as h:
        print(f"cluster up in {h.start_seconds:.2f} s, conf={h.conf}, pids={h.pids}")
        print(subprocess.run(["sinfo"], env=h.env, capture_output=True, text=True).stdout)
        r = subprocess.run(["srun", "-n1", "bash", "-c", "echo job=$SLURM_JOB_ID on $(hostname)"],
                           env=h.env, capture_output=True, text=True, timeout=60)
        print("srun:", r.returncode, r.stdout.strip(), r.stderr.strip())
