"""The processes localcloud starts (Lambda workers, training toolkits) never outlive it.

Each one leads a process group of its own (so a kill takes whatever it started too), and three things
together make sure that a localcloud that dies, even by SIGKILL, leaves none of them behind:

1. **A parent-death signal, set in the child itself** (`prctl(PR_SET_PDEATHSIG)` through ctypes, in
   the `python -c` bootstrap of `python_command`, so no external binary is needed). The kernel sends it
   when the *thread* that started the child ends, so children are started from threads that outlive
   them: the Lambda launcher thread, and a training job's runner thread, which waits for its toolkit.
2. **The whole group dies, not just the child.** The signal is a real-time one, never SIGTERM (which
   keeps meaning "stop, with a grace period" for StopTrainingJob), and the bootstrap turns it into
   SIGKILL of its own process group from a watcher thread, so a training script and the processes it
   started die with the toolkit, and a function's children with their worker, within milliseconds.
   A child that exits by itself first (a worker does when localcloud's sockets close, which can happen
   before the signal is sent) ends the rest of its group on its way out.
3. **A durable record of every group** (`ProcessGroups`: its id, session, the leader's start time and
   the boot id) in the store until the group has ended. At start, recorded groups that still have
   members are reaped with SIGKILL (`reap_leftovers`): only processes whose process group and session
   match and that started no earlier than the recorded leader, each checked again through a pidfd
   before it is signalled, so a reused pid is never killed. Nothing is ever killed for where it runs.

A group also ends with its leader: `end_group` SIGKILLs what is left of it once the leader has exited
(as a Lambda sandbox or a training container ends with its main process), while the leader is still an
unreaped zombie, so its pid, which names the group, cannot have been reused meanwhile.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from localcloud.store import Store

logger = logging.getLogger("localcloud")

GROUP_KIND = "localcloud/process-group"  # key: "<pgid>-<leader start time>"
# A real-time signal, which nothing here uses: it stays blocked in whatever the child starts (masks are
# inherited), which changes nothing for them; SIGTERM keeps its meaning.
PARENT_DEATH_SIGNAL = signal.SIGRTMIN + 4

# Runs first in every child. The signal is blocked in all its threads but the watcher, which sigwait()s
# for it and kills the group: a Python-level handler would wait for the main thread, which may sit in C
# code for as long as it likes (awslambdaric's waits for the next event inside its C client). The parent
# pid is checked after prctl: if localcloud died before the signal was set, it will never come.
# A child that exits by itself first (a worker does as soon as localcloud's sockets close, which can be
# before the signal is sent) ends the rest of its group at exit, keeping its own exit status.
_BOOTSTRAP = """\
def _die_with_localcloud():
    import atexit, ctypes, os, signal, threading

    def end():  # the whole group when this process leads one (start_new_session), else only itself
        os.killpg(0, 9) if os.getpgrp() == os.getpid() else os.kill(os.getpid(), 9)

    def end_the_others():
        me = os.getpid()
        if os.getpgrp() != me:
            return
        for entry in os.listdir("/proc"):
            try:
                if entry.isdigit() and int(entry) != me:
                    with open(f"/proc/{{entry}}/stat", "rb") as stat:
                        if int(stat.read().rsplit(b")", 1)[1].split()[2]) == me:
                            os.kill(int(entry), 9)
            except (OSError, ValueError, IndexError):
                pass

    def watch():
        signal.sigwait({{{signum}}})
        end()

    signal.pthread_sigmask(signal.SIG_BLOCK, {{{signum}}})
    threading.Thread(target=watch, name="localcloud-watch", daemon=True).start()
    atexit.register(end_the_others)
    if ctypes.CDLL(None, use_errno=True).prctl(1, {signum}, 0, 0, 0):  # 1: PR_SET_PDEATHSIG
        raise OSError(ctypes.get_errno(), "prctl(PR_SET_PDEATHSIG) failed")
    if os.getppid() != {parent}:
        end()
_die_with_localcloud()
del _die_with_localcloud
"""


def python_command(code: str, *args: str) -> list[str]:
    """argv that runs Python `code` (then sys.argv[1:] == args) in a child that dies with this process
    and takes its process group with it. Start it with `start_new_session=True`."""
    bootstrap = _BOOTSTRAP.format(signum=int(PARENT_DEATH_SIGNAL), parent=os.getpid())
    return [sys.executable, "-c", bootstrap + code, *args]


# --- the process table ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProcessStat:
    """What /proc/<pid>/stat says about a process that localcloud needs to know it again."""

    pid: int
    state: str
    pgid: int
    sid: int
    start: int  # clock ticks after boot (field 22): with the boot id, a pid's identity


def read_stat(pid: int) -> ProcessStat | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    # The command name (field 2) may hold spaces and parentheses; the fields after its last ")" do not.
    fields = raw[raw.rindex(b")") + 2 :].split()
    return ProcessStat(pid, fields[0].decode(), int(fields[2]), int(fields[3]), int(fields[19]))


def processes() -> list[ProcessStat]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (stat := read_stat(int(entry))) is not None:
            found.append(stat)
    return found


def live_members(pgid: int) -> list[ProcessStat]:
    """The processes of group `pgid` that still run (a zombie waiting to be reaped does not)."""
    return [stat for stat in processes() if stat.pgid == pgid and stat.state != "Z"]


def boot_id() -> str:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return "unknown"


def _kill_exactly(stat: ProcessStat) -> bool:
    """SIGKILL the process `stat` describes, and no other process that has its pid by now."""
    try:
        pidfd = os.pidfd_open(stat.pid)
    except ProcessLookupError:
        return False
    except (AttributeError, OSError):  # no pidfds (Linux < 5.3): the check and the kill are not atomic
        again = read_stat(stat.pid)
        if again is None or again.start != stat.start:
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(stat.pid, signal.SIGKILL)
        return True
    try:
        again = read_stat(stat.pid)  # the pidfd pins this process: the pid cannot change hands now
        if again is None or again.start != stat.start:
            return False
        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
        return True
    except ProcessLookupError:
        return False
    finally:
        os.close(pidfd)


# --- one group ---------------------------------------------------------------------------------------


def signal_group(process: subprocess.Popen, signum: int) -> None:
    """Signal `process`'s whole group, unless the process has been reaped (its pid may be reused then)."""
    if process.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signum)


def leader_exited(process: subprocess.Popen) -> bool:
    """Whether the group's leader has exited, without reaping it (so its group id stays taken)."""
    if process.returncode is not None:
        return True
    try:
        return os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    except ChildProcessError:
        return True


def end_group(process: subprocess.Popen) -> int:
    """Wait for the group's leader to exit, SIGKILL the rest of its group, then reap it; its exit status.

    Processes a script or function left running end with it, as in a container or a Lambda sandbox.
    """
    with contextlib.suppress(ChildProcessError):
        os.waitid(os.P_PID, process.pid, os.WEXITED | os.WNOWAIT)
    signal_group(process, signal.SIGKILL)
    return process.wait()


# --- the durable records ----------------------------------------------------------------------------


class ProcessGroups:
    """The process groups localcloud started and that may still run, recorded in the store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def add(self, process: subprocess.Popen, what: str) -> str | None:
        """Record the group `process` leads (started with start_new_session); returns the record's key.

        Call it right after starting the process; if it raises (a full disk), kill the group.
        """
        stat = read_stat(process.pid)
        if stat is None:  # already gone, and so is its group: a group dies with its last member
            return None
        key = f"{stat.pid}-{stat.start}"
        self.store.put(
            GROUP_KIND,
            key,
            {
                "pgid": stat.pgid,
                "sid": stat.sid,
                "leader_start": stat.start,
                "boot_id": boot_id(),
                "what": what,
                "recorded": time.time(),
            },
        )
        return key

    def remove(self, key: str | None) -> None:
        """The group has ended (see end_group); forget it."""
        if key is not None:
            self.store.delete(GROUP_KIND, key)

    def reap_leftovers(self) -> int:
        """SIGKILL what is left of the groups a previous localcloud recorded; returns how many processes.

        Call it at start, before anything starts processes of its own.
        """
        killed, boot = 0, boot_id()
        records = self.store.scan(GROUP_KIND)
        table = processes() if records else []
        for key, record in records:
            if record["boot_id"] == boot:
                members = _members(record, table)
                for stat in members:
                    killed += _kill_exactly(stat)
                if members:
                    logger.warning("ended %d leftover process(es) of %s", len(members), record["what"])
            self.store.delete(GROUP_KIND, key)
        return killed


def _members(record: dict, table: list[ProcessStat]) -> list[ProcessStat]:
    """The live processes of the recorded group: same group and session, started no earlier than its
    leader. A leader pid that runs with another start time was reused, which the kernel does only once
    no process of the old group is left: then nothing is."""
    pgid, start = record["pgid"], record["leader_start"]
    leader = next((stat for stat in table if stat.pid == pgid), None)
    if leader is not None and leader.start != start:
        return []
    return [
        stat
        for stat in table
        if stat.pgid == pgid and stat.sid == record["sid"] and stat.start >= start and stat.state != "Z"
    ]
