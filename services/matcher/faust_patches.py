"""A fix for faust-streaming 0.15.3's offset commits on transactional topics, applied at import.

The ingester writes cost lines in transactions, so the topic has a control record (invisible to
consumers) after every invoice: offset gaps. faust fills gaps with `_add_gap(tp, last_read + 1, offset)`
where `offset` is the record that *closes* the gap, and stores the interval inclusive of it, so that
record's offset is acked twice. `_new_offset` commits only the first run of consecutive offsets and a
duplicate ends a run: every commit crossed one gap only, i.e. one invoice per partition per commit
interval (measured: ~14 offsets/s per partition), while processing was long done. Committed offsets
then trail far behind, lag looks huge, and a restart reprocesses that backlog.

The fix records the gap without the closing record: exactly the offsets never delivered.
"""

from __future__ import annotations

from typing import Any

from faust.transport.consumer import Consumer

_PATCHED = "_cloudbill_exact_gap"


def apply() -> None:
    if getattr(Consumer, _PATCHED, False):
        return
    original = Consumer._add_gap

    async def _add_gap(self: Any, tp: Any, offset_from: int, offset_to: int) -> None:
        await original(self, tp, offset_from, offset_to - 1)

    Consumer._add_gap = _add_gap
    setattr(Consumer, _PATCHED, True)


apply()
