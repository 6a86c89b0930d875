"""Ctrl-C, SIGTERM or SIGHUP while a benchmark script starts: one line and status 130.

peak.py, ratios.py and report.py import this first, before torch, jax or matplotlib (seconds
each), and call install() when run as scripts. Until the script says it is "running" (its
own handlers, or its own KeyboardInterrupt handling, are in place), a signal prints the
script's message and ends the process at once with os._exit: an import in progress can
swallow sys.exit (or the KeyboardInterrupt) and go on. While "running", a signal raises
KeyboardInterrupt and is recorded (where Python can only print "Exception ignored", the
record still says the run was stopped). Once "done" (finish), a signal changes nothing: the
script has said how it ended, and Python is shutting down.

The lessons carry their own copy of this at their top, so that each stays one file.
"""

import os
import signal
import sys


def install(message):
    """Handle SIGINT, SIGTERM and SIGHUP from now on -> (phase, received).

    phase is a one-item list, ["starting"]: set phase[0] = "running" once the script handles
    KeyboardInterrupt itself, and "done" when it has ended. received lists the signals that
    arrived while running. A signal that is ignored now (SIGHUP under nohup, SIGINT in a job
    a script started with &) stays ignored; SIGHUP does not exist on Windows.
    """
    phase, received = ["starting"], []

    def handler(signum, frame):
        if phase[0] == "running":
            received.append(signum)
            raise KeyboardInterrupt(signal.Signals(signum).name)
        if phase[0] == "starting":
            phase[0] = "done"  # one message, however often the key is pressed
            start = "\n" if sys.stderr is not None and sys.stderr.isatty() else ""  # off ^C
            print(start + message, file=sys.stderr, flush=True)
            os._exit(130)

    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        number = getattr(signal, name, None)
        if number is not None and signal.getsignal(number) is not signal.SIG_IGN:
            signal.signal(number, handler)
    return phase, received


def finish(phase):
    """The script has ended and said how: phase[0] = "done", and the three signals ignored.

    Python puts back the default handlers as it shuts down (a second or so, with torch
    loaded), and a signal then would end the finished run with no word and status 143.
    """
    phase[0] = "done"
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):
        if hasattr(signal, name):
            signal.signal(getattr(signal, name), signal.SIG_IGN)
