"""The GRBL simulator on the wire: raw bytes over a real pty, as GRBL 1.1h answers."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
import serial

from drivers.sim.grbl import BANNER, Faults, GrblSimulator

pytestmark = pytest.mark.timeout(30)


class Wire:
    """A blocking client on the slave end of the simulator's pty."""

    def __init__(self, path: str) -> None:
        self.port = serial.Serial(path, 115200, timeout=2.0)

    def send(self, data: bytes) -> None:
        """Write raw bytes."""
        self.port.write(data)

    def line(self) -> str:
        """Read one line (CRLF stripped); fail on timeout."""
        raw = self.port.readline()
        assert raw.endswith(b"\r\n"), f"no complete line, got {raw!r}"
        return raw[:-2].decode("latin-1")

    def until(self, final: tuple[str, ...] = ("ok",), *, prefix: str = "error:") -> list[str]:
        """Read lines up to and including `ok` or an `error:` line."""
        out = []
        while True:
            line = self.line()
            out.append(line)
            if line in final or line.startswith(prefix):
                return out

    def ask(self, text: str) -> list[str]:
        """Send one line and return the lines up to its reply."""
        self.send(text.encode() + b"\n")
        return self.until()

    def status(self) -> str:
        """Ask for a status report."""
        self.send(b"?")
        while True:
            line = self.line()
            if line.startswith("<"):
                return line

    def banner(self) -> None:
        """Read until the boot banner."""
        while True:
            line = self.line()
            if line.startswith("Grbl "):
                assert line == "Grbl 1.1h ['$' for help]"
                return


def _start(**kw: object) -> tuple[GrblSimulator, Wire]:
    sim = GrblSimulator(**kw)  # type: ignore[arg-type]
    wire = Wire(sim.start())
    sim.power_cycle()  # the port open flushed the first banner; boot again
    return sim, wire


@pytest.fixture
def grbl() -> Iterator[tuple[GrblSimulator, Wire]]:
    sim, wire = _start(speed_factor=100.0, baud=0)
    wire.banner()
    yield sim, wire
    wire.port.close()
    sim.stop()


def test_banner_bytes_and_reset() -> None:
    sim, wire = _start(speed_factor=100.0, baud=0)
    try:
        assert wire.port.read(len(BANNER)) == b"\r\nGrbl 1.1h ['$' for help]\r\n"
        wire.send(b"\x18")  # a soft reset prints the banner again, no newline needed
        assert wire.port.read(len(BANNER)) == BANNER
    finally:
        wire.port.close()
        sim.stop()


def test_replies_and_error_codes(grbl: tuple[GrblSimulator, Wire]) -> None:
    sim, wire = grbl
    assert wire.ask("G21 G90") == ["ok"]
    assert wire.ask("") == ["ok"]  # an empty line is a valid line
    assert wire.ask("G5 X1") == ["error:20"]  # unsupported command
    assert wire.ask("G1 X1") == ["error:22"]  # no feed rate yet
    assert wire.ask("G0 G1 X1") == ["error:24"]  # two commands that use axis words
    assert wire.ask("G17 G18") == ["error:21"]  # two from one modal group
    assert wire.ask("G1 X1 X2 F100") == ["error:25"]  # repeated word
    assert wire.ask("G4") == ["error:28"]  # dwell without P
    assert wire.ask("G1 X1 P2 F100") == ["error:36"]  # unused word
    assert wire.ask("G2 X1 F100") == ["error:35"]  # arc without offsets
    assert wire.ask("X") == ["error:2"]
    assert wire.ask("1") == ["error:1"]
    assert wire.ask("G1 F-5") == ["error:4"]
    assert wire.ask("$Q") == ["error:3"]
    assert wire.ask("G1 X" + "1" * 80) == ["error:11"]  # over 79 characters
    assert wire.ask("G1 X1 F100 (comment) ; more") == ["ok"]
    assert wire.ask("G2 X1 Y1 I1 J0 F100") == ["error:33"]  # end not on the circle
    assert wire.ask("G2 X3 Y0 I1 J0") == ["ok"]  # a half circle about X2
    # CRLF is two line ends for GRBL: two replies.
    wire.send(b"G0 X0\r\n")
    assert wire.until() == ["ok"]
    assert wire.until() == ["ok"]
    assert sim.executed[:2] == ["G21 G90", "G1 X1 F100 (comment) ; more"]


def test_system_commands(grbl: tuple[GrblSimulator, Wire]) -> None:
    sim, wire = grbl
    settings = wire.ask("$$")
    assert settings[0] == "$0=10"
    assert "$11=0.010" in settings
    assert "$110=500.000" in settings
    assert settings[-1] == "ok"
    assert wire.ask("$G") == ["[GC:G0 G54 G17 G21 G90 G94 M5 M9 T0 F0 S0]", "ok"]
    assert wire.ask("$I") == ["[VER:1.1h.20190825:]", "[OPT:VN,15,128]", "ok"]
    assert wire.ask("$")[0].startswith("[HLP:$$ $# $G $I $N")
    assert wire.ask("$N") == ["$N0=", "$N1=", "ok"]
    assert wire.ask("$H") == ["error:5"]  # homing is off
    assert wire.ask("$100=-1") == ["error:4"]
    assert wire.ask("$0=2") == ["error:6"]
    assert wire.ask("$20=1") == ["error:10"]
    assert wire.ask("$110=600") == ["ok"]
    assert sim.settings[110] == 600
    assert wire.ask("$#")[0] == "[G54:0.000,0.000,0.000]"
    assert wire.ask("G10 L2 P1 X1 Y2 Z3") == ["ok"]
    assert wire.ask("$#")[0] == "[G54:1.000,2.000,3.000]"


def test_status_report_fields(grbl: tuple[GrblSimulator, Wire]) -> None:
    _, wire = grbl
    first = wire.status()
    assert first == "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0|WCO:0.000,0.000,0.000>"
    second = wire.status()
    assert second == "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0|Ov:100,100,100>"
    assert wire.status() == "<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0>"
    wire.send(b"\x91")  # feed override +10 %: reported in the next report
    assert "|Ov:110,100,100" in wire.status()
    assert wire.ask("G92 X-5") == ["ok"]  # a new offset: WCO in the next report
    assert "|WCO:5.000,0.000,0.000" in wire.status()
    assert wire.ask("M3 S1000") == ["ok"]
    assert wire.ask("N77 G1 X20 F60") == ["ok"]  # 15 mm at 1 mm/s (x100): a while
    report = wire.status()
    assert report.startswith("<Run|MPos:")
    assert "|Bf:14,128|Ln:77|FS:66,1000" in report


def test_alarm_lock_unlock_and_homing() -> None:
    sim, wire = _start(speed_factor=100.0, baud=0, homing=True)
    try:
        wire.banner()
        assert wire.line() == "[MSG:'$H'|'$X' to unlock]"
        assert wire.status().startswith("<Alarm|")
        assert wire.ask("G0 X1") == ["error:9"]
        assert wire.ask("$X") == ["[MSG:Caution: Unlocked]", "ok"]
        assert wire.status().startswith("<Idle|")
        assert wire.ask("$H") == ["ok"]
        assert wire.status().startswith("<Idle|MPos:-1.000,-1.000,-1.000")
    finally:
        wire.port.close()
        sim.stop()


def test_check_mode(grbl: tuple[GrblSimulator, Wire]) -> None:
    sim, wire = grbl
    assert wire.ask("$C") == ["[MSG:Enabled]", "ok"]
    assert wire.status().startswith("<Check|")
    assert wire.ask("G0 X10") == ["ok"]
    assert wire.ask("G1 X20") == ["error:22"]
    assert wire.ask("$C") == ["[MSG:Disabled]", "ok"]
    wire.banner()  # leaving check mode resets GRBL
    assert wire.status().startswith("<Idle|MPos:0.000,0.000,0.000")
    assert sim.checked == ["G0 X10"]
    assert sim.executed == []


def test_feed_hold_resume_and_safe_reset(grbl: tuple[GrblSimulator, Wire]) -> None:
    sim, wire = grbl
    assert wire.ask("G1 X50 F60") == ["ok"]  # 50 s at 1x, 0.5 s at 100x
    assert wire.status().startswith("<Run|")
    wire.send(b"!")
    deadline = time.monotonic() + 5
    while not wire.status().startswith("<Hold:0|"):
        assert time.monotonic() < deadline
    held = wire.status()
    assert wire.status().split("|")[1] == held.split("|")[1]  # not moving
    wire.send(b"~")
    assert wire.status().startswith("<Run|")
    wire.send(b"!")
    while not wire.status().startswith("<Hold:0|"):
        assert time.monotonic() < deadline
    wire.send(b"\x18")  # reset in Hold:0: no alarm
    wire.banner()
    assert wire.status().startswith("<Idle|")
    assert sim.alarms == []


def test_reset_while_moving_raises_alarm_3(grbl: tuple[GrblSimulator, Wire]) -> None:
    sim, wire = grbl
    assert wire.ask("G1 X50 F60") == ["ok"]
    assert wire.status().startswith("<Run|")
    wire.send(b"\x18")
    assert wire.line() == "ALARM:3"
    wire.banner()
    assert wire.line() == "[MSG:'$H'|'$X' to unlock]"
    assert sim.alarms == [3]


def test_rx_buffer_overflow_loses_bytes() -> None:
    # Lines that block on a full planner leave the RX buffer to fill; GRBL drops the rest.
    sim, wire = _start(speed_factor=1.0, baud=115200)
    try:
        wire.banner()
        lines = b"".join(b"G1 X%d.000 Y%d.000 F60\n" % (i, i) for i in range(1, 40))
        wire.send(lines)
        time.sleep(0.3)
        assert sim.rx_overflow_bytes > 0
        assert sim.max_in_flight > 128
        assert wire.status().split("|")[2] == "Bf:0,0"
    finally:
        wire.port.close()
        sim.stop()


def test_eeprom_write_with_company_is_recorded() -> None:
    sim, wire = _start(speed_factor=100.0, baud=0)
    try:
        wire.banner()
        wire.send(b"G10 L20 P1 X0\nG0 X1\n")  # a careless host: not sent alone
        assert wire.until() == ["ok"]
        assert sim.eeprom_violations == ["G0 X1\n"]
    finally:
        wire.port.close()
        sim.stop()


def test_hard_limit_alarm_is_critical() -> None:
    sim, wire = _start(speed_factor=100.0, baud=0, faults=Faults(alarm_at_line=2))
    try:
        wire.banner()
        assert wire.ask("G1 X1 F600") == ["ok"]
        wire.send(b"G1 X2\n")
        lines = [wire.line(), wire.line(), wire.line()]
        assert lines == ["ok", "ALARM:1", "[MSG:Reset to continue]"]
        wire.send(b"?G0 X3\n")  # ignored until reset
        time.sleep(0.1)
        assert wire.port.in_waiting == 0
        wire.send(b"\x18")
        wire.banner()
        assert wire.line() == "[MSG:'$H'|'$X' to unlock]"
    finally:
        wire.port.close()
        sim.stop()


def test_baud_emulation_meters_bytes() -> None:
    sim, wire = _start(speed_factor=100.0, baud=9600)  # 960 bytes/s each way
    try:
        wire.banner()
        t0 = time.monotonic()
        reply = wire.ask("G4 P0" + " " * 90)  # 96 bytes in, 4 out: about 0.1 s
        elapsed = time.monotonic() - t0
        assert reply == ["ok"]
        assert elapsed >= 96 / 960
    finally:
        wire.port.close()
        sim.stop()


def test_standalone_process_prints_pty_path() -> None:
    proc = subprocess.Popen(
        [sys.executable, "-m", "drivers.sim.grbl", "--speed-factor", "100", "--baud", "0"],
        stdout=subprocess.PIPE,
    )
    try:
        assert proc.stdout is not None
        path = proc.stdout.readline().decode().strip()
        assert path.startswith("/dev/")
        wire = Wire(path)
        wire.send(b"\x18")
        wire.banner()
        assert wire.ask("$I")[-1] == "ok"
        wire.port.close()
    finally:
        proc.terminate()
        proc.wait(5)
