"""A pseudo-terminal pair for simulators: the simulator owns the master end, a driver
opens the slave path exactly as it would open /dev/ttyUSB0."""

from __future__ import annotations

import contextlib
import os
import termios
import tty


class PtyPair:
    """A raw pty: `path` is the device a driver opens, `master_fd` is the simulator's end."""

    def __init__(self) -> None:
        self.master_fd, self._slave_fd = os.openpty()
        # Raw mode on both ends: no echo, no CR/LF translation, bytes pass unchanged.
        tty.setraw(self._slave_fd, termios.TCSANOW)
        tty.setraw(self.master_fd, termios.TCSANOW)
        self.path = os.ttyname(self._slave_fd)
        os.set_blocking(self.master_fd, False)

    def close(self) -> None:
        """Close both ends; a driver reading the slave sees the link drop."""
        for fd in (self.master_fd, self._slave_fd):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.master_fd = -1
        self._slave_fd = -1
