#!/usr/bin/python3
"""supervisord event listener: a service that cannot start stops the whole container.

supervisord keeps running when a program reaches FATAL, so the container would stay up but
broken and no restart policy would act. Stopping supervisord (and making the entrypoint exit
1) hands the decision to the restart policy or to whoever runs the container.
"""

import os
import signal
import sys

# Read by the entrypoint, which then exits 1 instead of supervisord's 0.
FATAL_MARKER = "/run/boson-allinone.fatal"


def main() -> None:
    while True:
        sys.stdout.write("READY\n")
        sys.stdout.flush()
        header = dict(token.split(":", 1) for token in sys.stdin.readline().split())
        payload = sys.stdin.read(int(header.get("len", "0")))
        sys.stderr.write(f"exit-on-fatal: {payload.strip()}: stopping the container\n")
        sys.stderr.flush()
        with open(FATAL_MARKER, "w", encoding="utf-8") as marker:
            marker.write(payload)
        os.kill(os.getppid(), signal.SIGTERM)
        sys.stdout.write("RESULT 2\nOK")
        sys.stdout.flush()


if __name__ == "__main__":
    main()
