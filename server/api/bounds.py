"""Lists and maps in a request have a bound, checked before any item becomes a Python object.

A request may carry 100 000 items in a repeated field (or keys in a map, values in a
Struct). Validating them one by one makes that many objects, and freeing them leaves the
allocator's arenas fragmented: the server's memory grows and never comes back. So every
request is measured first with len(), which reads the parsed message without making an
object per item; past MAX_ITEMS it is INVALID_ARGUMENT at once. The bound is far above any
list the API takes: the RPCs' own limits (100 selectors, 100 canary steps, 1 000 metric
windows ...) come first, in their own words.
"""

from __future__ import annotations

from functools import cache

from google.protobuf.descriptor import Descriptor
from google.protobuf.message import Message

from ..errors import InvalidArgument

MAX_ITEMS = 4096


@cache
def _fields(descriptor: Descriptor) -> tuple[tuple[str, bool, bool, bool], ...]:
    """(name, repeated, holds messages, a map of messages) of the fields worth looking into."""
    out = []
    for f in descriptor.fields:
        repeated = bool(f.is_repeated)
        entry = f.message_type
        if not repeated and entry is None:
            continue
        is_map = entry is not None and entry.GetOptions().map_entry
        map_of_messages = (
            is_map and entry is not None and entry.fields_by_name["value"].message_type is not None
        )
        out.append((f.name, repeated, entry is not None and not is_map, bool(map_of_messages)))
    return tuple(out)


def has_items(descriptor: Descriptor) -> bool:
    """Whether a message of this type can hold a list or a map at all (check_items has work to do)."""
    return bool(_fields(descriptor))


def check_items(message: Message, path: str = "") -> None:
    """InvalidArgument naming the first list or map in `message` with more than MAX_ITEMS entries."""
    for name, repeated, holds, map_of_messages in _fields(message.DESCRIPTOR):
        where = f"{path}.{name}" if path else name
        if repeated:
            items = getattr(message, name)
            if len(items) > MAX_ITEMS:
                raise InvalidArgument.one(where, f"at most {MAX_ITEMS} items, not {len(items)}")
            if map_of_messages:
                for key, item in items.items():
                    check_items(item, f"{where}[{key!r}]")
            elif holds:
                for i, item in enumerate(items):
                    check_items(item, f"{where}[{i}]")
        elif message.HasField(name):
            check_items(getattr(message, name), where)
