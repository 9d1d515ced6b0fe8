"""The matcher's pure rules, free of faust and I/O, so they can be tested and replayed over plain dicts.

- `extract`: a cost line's description → product, kind and resource name (what the line says it bills);
- `matching`: the inventory view and the attribution of a line to a resource (`match_line`);
- `assembly`: when a revision is complete, and its completion event (one fact per line, decided at a marker).

`services/matcher/handler.py` applies these to a batch of records; `app.py` moves bytes between Kafka and faust tables.
"""

from services.matcher.domain import assembly
from services.matcher.domain.assembly import Completed, LineFact, Waiting
from services.matcher.domain.matching import InventoryEntry, InventoryIndex, match_line

__all__ = ["Completed", "InventoryEntry", "InventoryIndex", "LineFact", "Waiting", "assembly", "match_line"]
