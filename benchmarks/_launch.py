"""Run a command and report its own peak memory, free of the caller's.

    python -S benchmarks/_launch.py STATS_FILE COMMAND ARGS...

Linux carries a process's memory high-water mark across ``exec``: a command started by
a big Python process (with ``fork`` or ``vfork``) reports at least that process's peak
in ``ru_maxrss``. This launcher is a small interpreter (no ``site``, no imports beyond
``os`` and ``time``) that forks the command itself, so the figure it writes to
STATS_FILE (``seconds maxrss_kib``) has only this launcher's few MB as a floor.
"""

import os
import sys
import time


def main() -> int:
    stats, command = sys.argv[1], sys.argv[2:]
    start = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child becomes the command
        try:
            os.execvp(command[0], command)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    seconds = time.perf_counter() - start
    with open(stats, "w") as f:
        f.write(f"{seconds} {usage.ru_maxrss}\n")
    return os.waitstatus_to_exitcode(status)


if __name__ == "__main__":
    sys.exit(main())
