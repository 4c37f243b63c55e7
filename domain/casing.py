"""How a response cases enum values (`call_status`, `call_type`, `direction`,
`disconnection_reason`).

Calls are stored in lower case. Upstream answers in UPPER case where it shows a call as
listed (get one call, both list forms, the `call` inside the phone and web creates) and in
lower case everywhere else (create, update, schedule changes, the wrapper fields of the
phone and web creates); `upstream` reproduces that, `lower` and `upper` answer one way
throughout (CALLS_ENUM_CASE). Inputs take either case regardless.
"""

from __future__ import annotations

from dataclasses import dataclass

from calls_server.domain.calls import Call

MODES = ("upstream", "lower", "upper")
# `disconnection_reason` too: upstream lists calls with `USER_HANGUP`; the server, its
# dialers and the sandbox store `user_hangup`, as a PUT's input in either case is stored.
CASED_FIELDS = ("call_status", "call_type", "direction", "disconnection_reason")


@dataclass(frozen=True)
class Casing:
    """The casing mode of the running server: one of MODES."""

    mode: str = "upstream"

    def call(self, call: Call, listed: bool = False) -> Call:
        """`call` as a response shows it; `listed` where upstream shows calls as listed."""
        if not self._upper(listed):
            return call
        shown = dict(call)  # a loop, not a merge of comprehensions: a third of the time
        for field in CASED_FIELDS:
            value = call[field]
            if value is not None:
                shown[field] = value.upper()
        return shown

    def value(self, value: str | None) -> str | None:
        """An enum value outside a call record (a wrapper field), as a response shows it."""
        return _upper(value) if self._upper(False) else value

    def listed(self, value: str | None) -> str | None:
        """An enum value upstream shows in UPPER case wherever it appears (a batch task's
        status), as a response shows it."""
        return _upper(value) if self._upper(True) else value

    def _upper(self, listed: bool) -> bool:
        return listed if self.mode == "upstream" else self.mode == "upper"


def _upper(value: str | None) -> str | None:
    return value.upper() if value is not None else None
