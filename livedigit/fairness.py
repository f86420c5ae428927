"""Fair order for queued work: submits round robin over client addresses, then over their connections;
live snapshots in slots that know how many addresses hold one.

A single first-come queue lets whoever sends most take the model: 49 connections from one address each
at their submit limit put hundreds of images in front of a bystander's one. :class:`FairQueue` instead
serves the **least recently served address** first, and within an address its least recently served
connection, each connection's own submits in order. A client with one submit waiting is therefore
served after at most one item of every other waiting address, however many they queued; and when only
one client is waiting, it gets every turn (the queue never idles while work is waiting).

Live snapshots wait in :class:`Slots`, one per connection (latest wins), served one per address before a
second. The slots count the addresses holding one, so that the batcher stops looking for another
address as soon as every waiting one has been served: hundreds of connections behind one address (a
school behind a NAT, or the bench) would otherwise make every batch walk all of their slots.
"""

from __future__ import annotations

from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Iterator
from typing import Generic, Protocol, TypeVar


class Queued(Protocol):
    """What the queue needs of an item: whose it is."""

    @property
    def client(self) -> Hashable: ...

    @property
    def owner(self) -> Hashable | None: ...


T = TypeVar("T", bound=Queued)


class FairQueue(Generic[T]):
    """Items grouped by ``client`` (an address) and ``owner`` (a connection); see the module docstring.

    Not thread-safe: the event loop owns it. Every operation is O(1) except :meth:`remove_owner`.
    """

    def __init__(self) -> None:
        self._clients: OrderedDict[Hashable, OrderedDict[Hashable | None, deque[T]]] = OrderedDict()
        self._per_client: dict[Hashable, int] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def __bool__(self) -> bool:
        return self._count > 0

    @property
    def clients(self) -> int:
        """Client addresses with at least one item queued."""
        return len(self._clients)

    def count(self, client: Hashable) -> int:
        """Items queued by one client address."""
        return self._per_client.get(client, 0)

    def holds(self, client: Hashable, owner: Hashable | None) -> bool:
        """Whether connection ``owner`` of ``client`` has an item queued."""
        owners = self._clients.get(client)
        return owners is not None and owner in owners

    def __iter__(self) -> Iterator[T]:
        for owners in self._clients.values():
            for items in owners.values():
                yield from items

    def push(self, item: T) -> None:
        """Queue ``item`` behind its connection's earlier ones. A client with nothing queued goes first
        in line: it was served less recently than every client that is waiting now."""
        owners = self._clients.get(item.client)
        if owners is None:
            owners = self._clients[item.client] = OrderedDict()
            self._clients.move_to_end(item.client, last=False)
        items = owners.get(item.owner)
        if items is None:
            items = owners[item.owner] = deque()
            owners.move_to_end(item.owner, last=False)
        items.append(item)
        self._count += 1
        self._per_client[item.client] = self._per_client.get(item.client, 0) + 1

    def peek(self) -> T:
        """The item :meth:`pop` would return."""
        owners = next(iter(self._clients.values()))
        return next(iter(owners.values()))[0]

    def first(self, accept: Callable[[T], bool]) -> T | None:
        """The first item in fair order that ``accept`` takes, or ``None``. Only each connection's next item
        is looked at: a connection's items are served in the order it sent them."""
        for owners in self._clients.values():
            for items in owners.values():
                if accept(items[0]):
                    return items[0]
        return None

    def pop(self, item: T | None = None) -> T:
        """Take the next item (or ``item``, which :meth:`first` returned), and send its connection and its
        address to the back of their lines."""
        if item is None:
            client, owners = next(iter(self._clients.items()))
            owner, items = next(iter(owners.items()))
        else:
            client, owner = item.client, item.owner
            owners = self._clients[client]
            items = owners[owner]
            assert items[0] is item, "only a connection's next item can be taken"
        item = items.popleft()
        self._count -= 1
        _count_down(self._per_client, client, 1)
        if items:
            owners.move_to_end(owner)
        else:
            del owners[owner]
        if owners:
            self._clients.move_to_end(client)
        else:
            del self._clients[client]
        return item

    def remove_owner(self, owner: Hashable) -> list[T]:
        """Take every item of one connection out of the queue (it went away); O(addresses waiting)."""
        for client, owners in self._clients.items():
            if owner in owners:
                items = list(owners.pop(owner))
                self._count -= len(items)
                _count_down(self._per_client, client, len(items))
                if not owners:
                    del self._clients[client]
                return items
        return []

    def clear(self) -> None:
        self._clients.clear()
        self._per_client.clear()
        self._count = 0


class Slots(Generic[T]):
    """One item per connection (``owner``), in line order: replacing a connection's item keeps its place,
    a new connection joins the end. Not thread-safe: the event loop owns it. Every operation is O(1)."""

    def __init__(self) -> None:
        self._items: dict[Hashable | None, T] = {}
        self._per_client: dict[Hashable, int] = {}

    def __len__(self) -> int:
        return len(self._items)

    def __bool__(self) -> bool:
        return bool(self._items)

    def __iter__(self) -> Iterator[T]:
        """The items in line order."""
        return iter(self._items.values())

    @property
    def clients(self) -> int:
        """Client addresses holding at least one slot."""
        return len(self._per_client)

    def put(self, item: T) -> T | None:
        """Put ``item`` in its connection's slot; returns the item it replaces, if any."""
        previous = self._items.get(item.owner)
        self._items[item.owner] = item
        if previous is None:
            self._per_client[item.client] = self._per_client.get(item.client, 0) + 1
        return previous

    def pop(self, owner: Hashable | None) -> T | None:
        """Empty a connection's slot; returns its item, if any."""
        item = self._items.pop(owner, None)
        if item is not None:
            _count_down(self._per_client, item.client, 1)
        return item

    def clear(self) -> None:
        self._items.clear()
        self._per_client.clear()


def _count_down(per_client: dict[Hashable, int], client: Hashable, items: int) -> None:
    """Take ``items`` off a client's count, dropping the client at zero: the count's length is then the
    number of addresses with something waiting."""
    left = per_client[client] - items
    if left:
        per_client[client] = left
    else:
        del per_client[client]
