"""SMPP 3.4 command_status values (section 5.1.3): the numbers every ESME module answers with.

A leaf module (smpplib's descriptions only), so that the errors, the codec and the routing
can all name a status without importing each other.
"""

from __future__ import annotations

import smpplib.consts as consts

__all__ = ["Status"]


class Status:
    """The SMPP command_status values we use (SMPP 3.4, section 5.1.3)."""

    ROK = 0x00
    RINVMSGLEN = 0x01
    RINVCMDLEN = 0x02
    RINVCMDID = 0x03
    RINVBNDSTS = 0x04
    RALYBND = 0x05
    RSYSERR = 0x08
    RINVDSTADR = 0x0B
    RINVPASWD = 0x0E
    RINVSYSID = 0x0F
    RMSGQFUL = 0x14
    RTHROTTLED = 0x58
    RINVOPTPARSTREAM = 0xC0
    RINVPARLEN = 0xC2

    @staticmethod
    def describe(status: int) -> str:
        text = consts.DESCRIPTIONS.get(status, "unknown status")
        return f"{text} (0x{status:02x})"
