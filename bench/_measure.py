"""Run one program and write its own wall time and peak RSS as JSON: ``_measure.py OUT -- ARGV...``.

Linux keeps a process's peak RSS across ``execve``, and a child made by fork (or vfork) starts with
its parent's RSS: measured straight from the bench driver (which holds the simulators' data), a
child would report the driver's size. This launcher is a small fresh interpreter, so the program it
starts inherits only its few MB; ``wait4`` on that program's pid gives the program's own figures.
"""

import json
import os
import sys
import time


def main() -> int:
    out, argv = sys.argv[1], sys.argv[3:]
    started = time.perf_counter()
    pid = os.posix_spawnp(argv[0], argv, os.environ)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w", encoding="utf-8") as handle:
        json.dump({"returncode": code, "maxrss_kb": usage.ru_maxrss, "wall_s": wall}, handle)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main())
