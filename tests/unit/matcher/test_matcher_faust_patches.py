"""faust's offset bookkeeping across transaction markers, with the patch applied."""

import asyncio
from collections import defaultdict
from types import SimpleNamespace

from faust.transport.consumer import Consumer
from intervaltree import IntervalTree

from services.matcher import faust_patches


def _consumer_state() -> SimpleNamespace:
    return SimpleNamespace(
        _committed_offset=defaultdict(lambda: None),
        _gap=defaultdict(IntervalTree),
        _acked=defaultdict(list),
        _acked_index=defaultdict(set),
    )


def _read(state: SimpleNamespace, tp: str, offsets: list[int]) -> None:
    """What faust's fetch loop does: a gap before each record that does not follow the last one, then an ack."""
    last = None
    for off in offsets:
        if last is not None and off - last > 1:
            asyncio.run(Consumer._add_gap(state, tp, last + 1, off))
        state._acked[tp].append(off)
        state._acked_index[tp].add(off)
        last = off


def test_one_commit_crosses_every_transaction_marker() -> None:
    faust_patches.apply()
    state = _consumer_state()
    # Three invoices of 3 lines + marker each, a transaction control record after each: offsets 4, 9, 14.
    offsets = [0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 12, 13]
    _read(state, "tp", offsets)
    assert Consumer._new_offset(state, "tp") == 14  # everything read, in one commit


def test_patch_is_idempotent() -> None:
    faust_patches.apply()
    patched = Consumer._add_gap
    faust_patches.apply()
    assert Consumer._add_gap is patched
