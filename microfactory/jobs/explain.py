"""Turn a job's failure reason into advice an operator or member can act on."""

from __future__ import annotations

_ADVICE = (
    (
        ("thermal", "heating failed", "maxtemp", "mintemp"),
        "The firmware stopped the machine because a heater or its sensor misbehaved. Let it cool, "
        "check the thermistor and heater wiring, and ask an operator before printing again.",
    ),
    (
        ("disconnected", "link lost", "serial", "unreachable", "no reply"),
        "The computer lost contact with the machine (cable, power or USB hub). Check the cable and "
        "that the machine is on; the part is probably incomplete.",
    ),
    (
        ("interrupted by a restart",),
        "microfactory restarted while this job ran on a USB machine, which stops the machine. "
        "Check the part; if it is incomplete, clear the bed as bad and requeue.",
    ),
    (
        ("alarm", "limit"),
        "The CNC controller raised an alarm (for example a limit switch or a homing failure). "
        "Check the machine, home it, and unlock it before running again.",
    ),
    (
        ("error:", "refused"),
        "The machine refused a command in the program. Check the G-code was made for this machine.",
    ),
    (
        ("emergency stop",),
        "An operator pressed emergency stop. The machine must be homed before the next job.",
    ),
    (
        ("resend", "checksum"),
        "The link corrupted data too often to continue. Try another USB cable or port.",
    ),
)


def explain_failure(reason: str | None) -> str | None:
    """Return advice for a failure reason, or None if there is nothing specific to say."""
    if not reason:
        return None
    lowered = reason.lower()
    for needles, advice in _ADVICE:
        if any(n in lowered for n in needles):
            return advice
    return None
