"""Background work of a node, in a child process the server supervises.

Forwarding to engines is Python work that would hold the GIL against the request loop;
as a ``trubrics-ingestion`` subcommand in a child process it runs on another core, shows
up by name in ``ps``, and can be run by hand. A child exits when its parent is gone
(``--parent-pid``); the server restarts one that dies.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
from pathlib import Path

from ..config import Settings

log = logging.getLogger("trubrics_ingestion.children")


# The server's settings and secrets (the init key, the registry's and engines' URLs): a
# child is given what it needs of them, and no more.
OURS = "TRUBRICS_"


def child_environment(env: dict[str, str], *, drop: tuple[str, ...] = (OURS,)) -> dict[str, str]:
    """The server's environment without the variables named by the prefixes in ``drop``,
    plus ``env``. The rest (PATH, HOME, locale, SSL_CERT_FILE...) is the operator's and
    passes on."""
    kept = {name: value for name, value in os.environ.items() if not name.startswith(drop)}
    return {**kept, **env}


class Child:
    """Runs ``trubrics-ingestion ARGS --parent-pid PID --data-dir DIR``; restarts it if it
    dies. ``env`` is its whole environment (see ``child_environment``)."""

    def __init__(self, name: str, args: list[str], data_dir: Path, env: dict[str, str]) -> None:
        self.name = name
        self._env = env
        self._command = [
            sys.executable, "-m", "trubrics_ingestion", *args,
            "--parent-pid", str(os.getpid()), "--data-dir", str(data_dir),
        ]  # fmt: skip
        self._process: subprocess.Popen[bytes] | None = None
        self._stopping = threading.Event()
        self._watcher = threading.Thread(target=self._watch, name=name, daemon=True)

    def start(self) -> None:
        self._process = subprocess.Popen(self._command, env=self._env)
        self._watcher.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Stop the child; what it has not done yet stays safely in the store."""
        self._stopping.set()
        if self._process is not None and self._process.poll() is None:
            self._process.terminate()
            self._process.wait(timeout_s)

    def _watch(self) -> None:
        while not self._stopping.wait(1.0):
            if self._process is not None and self._process.poll() is not None:
                code = self._process.returncode
                log.error("the %s exited with %s; restarting it", self.name, code)
                self._process = subprocess.Popen(self._command, env=self._env)


def background_children(settings: Settings) -> list[Child]:
    """A forwarder when there are engines to forward to."""
    data_dir = settings.data_dir
    children = []
    if settings.forward_to:
        args = ["--max-backoff-s", str(settings.forward_max_backoff_s)]
        if settings.forward_retention_s is not None:
            args += ["--retention-s", str(settings.forward_retention_s)]
        # In the environment, not the command line: URLs may hold passwords, and any local
        # user can read a process's arguments.
        env = child_environment({"TRUBRICS_FORWARD_TO": " ".join(settings.forward_to)})
        children.append(Child("forwarder", ["forward", *args], data_dir, env))
    return children
