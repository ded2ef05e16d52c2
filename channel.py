"""Push items into an ``async for`` loop from anywhere, with the feel of a generator.

A :class:`Channel` connects a producer to a consumer with no buffer in between::

    async with c.sender as itemize:     # producer: `await itemize(x)` is `yield x`
        await itemize(item)             # and `itemize` can be handed to any coroutine

    async for item in c.receiver:       # consumer: a plain async iterator
        ...

The body of the ``async with`` block behaves like the body of an async generator
function: ``await itemize(x)`` hands ``x`` over when the receiver asks for an item
and returns when the receiver asks for the next one. A block that ends normally
ends the receiver's loop; a block that fails makes the receiver raise
:exc:`SenderFailed`; a receiver that closes makes the producer's ``itemize`` raise
:exc:`ReceiverClosed`, which the block absorbs, so the producer simply ends.
Cancelling either side loses no item.

Runs on asyncio (including uvloop) and on trio, detected when a channel is first
used. Only the standard library is imported; trio is used only under trio.
"""

from __future__ import annotations

__all__ = [
    "Channel",
    "ChannelClosed",
    "ChannelError",
    "Itemize",
    "Receiver",
    "ReceiverClosed",
    "Sender",
    "SenderFailed",
]

import sys
from types import GenericAlias

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections.abc import Callable
    from types import TracebackType
    from typing import Any, Generic, Protocol, Self, TypeVar, final

    T = TypeVar("T")  # invariant: a Channel both takes and gives items
    T_co = TypeVar("T_co", covariant=True)  # a Receiver only gives items out
    T_contra = TypeVar("T_contra", contravariant=True)  # a Sender only takes them in
else:
    # `typing` takes longer to import than this whole module. At run time these
    # names only have to let `Channel[int]`, `Itemize[str]`, ... be subscripted.
    class Generic:
        __slots__ = ()

        def __class_getitem__(cls, params):
            return cls if cls is Generic else GenericAlias(cls, params)

    Protocol = Generic
    T = T_co = T_contra = None

    def final(cls):
        return cls


# --- Exceptions -----------------------------------------------------------------


class ChannelError(Exception):
    """Base class of the errors a channel raises for a reason other than a stop signal.

    Raised as itself when the channel is misused in a way that is the calling
    code's fault: two tasks iterating one receiver at once, or one channel used
    from two event loops.
    """


class ChannelClosed(ChannelError):
    """An end of the channel that was already closed was used again.

    Your code's fault: it called ``itemize`` after its sender block ended, entered
    the sender a second time, or iterated a receiver that it had closed.
    """


class SenderFailed(ChannelError):
    """The sender block ended with an exception, so the stream is incomplete.

    Raised in the receiver; ``__cause__`` is the exception that ended the block
    (cancellation included). Not your receiving code's fault, but its data is
    truncated and it must not carry on as if the stream were complete.
    """


class ReceiverClosed(BaseException):
    """The receiver was closed: nobody will ask for another item.

    Raised by ``itemize`` in the producer. Like ``GeneratorExit``, it is a stop
    signal rather than an error, and derives from ``BaseException`` so that an
    ``except Exception:`` in the producer cannot swallow it and keep working for
    nobody. The sender block absorbs it (also inside an exception group made
    only of it), so an unmodified producer simply ends.
    """


# --- The public classes ------------------------------------------------------------


@final
class Channel(Generic[T]):
    """A rendezvous channel: one sender block pushes, one receiver pulls, nothing is buffered.

    Create it anywhere, also outside a running event loop; it binds to the event
    loop (asyncio, uvloop) or trio run that first uses it.

    Attributes:
        receiver: The consuming end, an async iterator.
        sender: The producing end, an async context manager giving ``itemize``.
    """

    __slots__ = ("_state", "receiver", "sender")

    receiver: Receiver[T]
    sender: Sender[T]

    def __init__(self) -> None:
        self._state = _State()
        self.receiver = Receiver(self._state)
        self.sender = Sender(self._state)

    def __repr__(self) -> str:
        return f"<Channel {self._state.describe()}>"


class Itemize(Protocol[T_contra]):
    """The type of the callback that the sender block gives: ``await itemize(x)`` is ``yield x``.

    Contravariant: an ``Itemize[object]`` may be passed where an ``Itemize[int]``
    is expected.
    """

    async def __call__(self, item: T_contra, /) -> None:
        """Hand ``item`` to the receiver, then wait until the receiver asks for the next one.

        Several tasks may call the same ``itemize`` at once: their items are
        delivered one at a time, in the order the calls arrived.

        Raises:
            ReceiverClosed: The receiver was closed, before or during the call.
                The item may or may not have been taken.
            ChannelClosed: The sender block that gave this ``itemize`` has ended
                (calls still waiting when it ends raise it too; their items were
                never taken).
            ChannelError: The channel belongs to another event loop.

        Cancellation: if the receiver had not yet taken the item, the item is
        withdrawn and will never be delivered; if it had, it stays delivered.
        """


@final
class Sender(Generic[T_contra]):
    """The producing end: ``async with c.sender as itemize:``.

    Entering returns ``itemize`` at once, without waiting for the receiver. The
    block then behaves like the body of an async generator function:

    - ends normally: the receiver's ``async for`` ends after the last item;
    - ends with an exception, cancellation included: the exception propagates
      here as usual, and the receiver raises :exc:`SenderFailed` from it;
    - the receiver was closed: ``itemize`` raised :exc:`ReceiverClosed`, and the
      block absorbs it (alone or in an exception group made only of it).

    To stop producing on a timeout and still end cleanly, put the timeout inside
    the block. A channel has one sender block: entering it while it is open, or
    after it has ended, raises :exc:`ChannelClosed`.

    Exiting never suspends, so a cancellation cannot interrupt it and bury the
    block's own exception.
    """

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    async def __aenter__(self) -> Itemize[T_contra]:
        state = self._state
        state.check_run()
        if state.sender_entered:
            if state.end is None:
                raise ChannelClosed(
                    "this channel's sender block is already open; "
                    "share its itemize instead of entering the sender again"
                )
            raise ChannelClosed(
                "this channel's sender block has already ended; a channel carries "
                "one stream, so create a new Channel for another one"
            )
        state.sender_entered = True
        return _Itemize(state)

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> bool:
        state = self._state
        if exc is None:
            state.end_stream(_CLEAN_END)
            return False
        if state.receiver_closed and _only_receiver_closed(exc):
            state.end_stream(_CLEAN_END)
            return True
        state.end_stream(exc)
        return False

    def __repr__(self) -> str:
        return f"<Sender of channel {self._state.describe()}>"


@final
class _Itemize(Generic[T_contra]):
    """The ``itemize`` of one sender block (see :class:`Itemize`)."""

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    async def __call__(self, item: T_contra, /) -> None:
        state = self._state
        if state.current_run() is not state.run or state.end is not None or state.receiver_closed:
            state.check_send()
        waiter = state.waiters.create_future()
        receiver = state.receiver_waiting
        if receiver is not None and not receiver.done():
            state.receiver_waiting = None
            receiver.set_result(item)
            state.delivered = waiter
        elif state.queue is None:
            state.queue = [(waiter, item)]
        else:
            state.queue.append((waiter, item))
        try:
            await waiter  # until the receiver asks again, or the stream ends
        except BaseException:
            state.withdraw(waiter)
            raise

    def __repr__(self) -> str:
        return f"<itemize of channel {self._state.describe()}>"


@final
class Receiver(Generic[T_co]):
    """The consuming end: ``async for item in c.receiver:``.

    Each ``__anext__`` asks for one item. Asking also lets the producer continue
    from the ``itemize`` that delivered the previous item, exactly as ``anext()``
    resumes a generator from its last ``yield``.

    Leaving early: a bare ``break`` closes nothing, as with a generator. Use
    ``async with c.receiver:`` (or ``await c.receiver.aclose()``), and the
    producer's pending and later ``itemize`` calls raise :exc:`ReceiverClosed`.

    Cancellation: a cancelled ``__anext__`` loses no item and does not close the
    receiver. If the item had already been handed over when the cancellation
    arrived, the next ``__anext__`` returns it; so ``anext()`` under a timeout
    can be retried.
    """

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> T_co:
        """Ask for the next item and wait for it.

        Raises:
            StopAsyncIteration: The sender block ended normally.
            SenderFailed: The sender block ended with an exception (its ``__cause__``).
            ChannelClosed: This receiver was closed (also while waiting).
            ChannelError: Another task is already waiting on this receiver, or
                the channel belongs to another event loop.
        """
        state = self._state
        if (
            state.current_run() is not state.run
            or state.receiver_waiting is not None
            or state.receiver_closed
        ):
            state.check_receive()
        if state.stash is not _NOTHING:
            item: T_co
            item, state.stash = state.stash, _NOTHING
            return item
        producer = state.delivered
        if producer is not None:  # it continues after its `itemize` now
            state.delivered = None
            if not producer.done():
                producer.set_result(None)
        if state.queue:
            item = state.take_from_queue()
            if item is not _NOTHING:
                return item
        if state.end is not None:
            raise state.end_of_stream()
        waiter = state.waiters.create_future()
        state.receiver_waiting = waiter
        try:
            item = await waiter
        except BaseException:
            state.receiver_cancelled(waiter)
            raise
        if item is _WAKE_TO_END:
            raise state.end_of_stream()
        return item

    def close(self) -> None:
        """Close the receiver: the producer's ``itemize`` raises :exc:`ReceiverClosed`.

        Idempotent, synchronous, and harmless after the stream has ended. A task
        waiting in ``__anext__`` on this receiver raises :exc:`ChannelClosed`.
        """
        self._state.close_receiver()

    async def aclose(self) -> None:
        """Close the receiver (see :meth:`close`). Never suspends."""
        self._state.close_receiver()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._state.close_receiver()

    def __repr__(self) -> str:
        return f"<Receiver of channel {self._state.describe()}>"


def _only_receiver_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is ReceiverClosed, or a (nested) group of nothing else."""
    others = BaseExceptionGroup("", [exc]).split(ReceiverClosed)[1]
    return others is None


# --- The shared state ------------------------------------------------------------

# Private markers, compared by identity.
_NOTHING: Any = object()  # an empty slot, where None could be an item
_CLEAN_END: Any = object()  # State.end after a sender block ended normally
_WAKE_TO_END: Any = object()  # wakes a receiver whose stream ended or was closed


def _unbound_run() -> object:
    return _NOTHING


class _State:
    """What both ends of one channel share.

    The hand-over, in the terms of a generator: the receiver *asks*
    (``Receiver.__anext__``), which resumes the producer whose item it took last
    (``delivered``) and then takes the next item, from the first producer waiting
    in ``queue`` or, if none waits, by parking until ``itemize`` hands one over.
    ``itemize`` (``_Itemize.__call__``) then parks until the receiver asks again.
    Every park and wake goes through a future-like waiter from the backend section
    at the bottom of this module; a waiter can be cancelled before its owner runs
    again, so wakers skip waiters that are ``done()``.
    """

    __slots__ = (
        "current_run",
        "delivered",
        "end",
        "queue",
        "receiver_closed",
        "receiver_waiting",
        "run",
        "sender_entered",
        "stash",
        "waiters",
    )

    # Identity of the event loop or trio run this channel is bound to, and the
    # function that tells the running one; they differ only when the channel is
    # used from elsewhere (or not yet bound).
    run: object
    current_run: Callable[[], object]
    waiters: _WaiterFactory  # makes waiters for the current task
    receiver_waiting: _Waiter | None  # the receiver, parked in `receive`
    delivered: _Waiter | None  # the producer whose item was taken; resumes at the next ask
    queue: list[tuple[_Waiter, Any]] | None  # producers waiting to hand an item over
    stash: Any  # an item handed to a receiver that was cancelled before it resumed
    end: Any  # None while the block may send; then _CLEAN_END or the block's exception
    sender_entered: bool
    receiver_closed: bool

    def __init__(self) -> None:
        self.run = None
        self.current_run = _unbound_run
        self.receiver_waiting = None
        self.delivered = None
        self.queue = None
        self.stash = _NOTHING
        self.end = None
        self.sender_entered = False
        self.receiver_closed = False

    def take_from_queue(self) -> Any:
        assert self.queue is not None
        while self.queue:
            waiter, item = self.queue.pop(0)
            if not waiter.done():  # a cancelled producer withdrew its item
                self.delivered = waiter
                return item
        return _NOTHING

    def withdraw(self, waiter: _Waiter) -> None:
        """Unlink a producer's waiter after its ``send`` was interrupted."""
        if self.delivered is waiter:
            self.delivered = None
        elif self.queue:
            self.queue = [entry for entry in self.queue if entry[0] is not waiter]

    def receiver_cancelled(self, waiter: _Waiter) -> None:
        """Unlink the receiver's waiter; keep an item that reached it too late."""
        if self.receiver_waiting is waiter:
            self.receiver_waiting = None
        elif waiter.done() and not waiter.cancelled():
            item = waiter.result()
            if item is not _WAKE_TO_END:
                self.stash = item

    def end_stream(self, end: Any) -> None:
        """The sender block exited: wake everybody who waits on it."""
        self.end = end
        receiver, self.receiver_waiting = self.receiver_waiting, None
        if receiver is not None and not receiver.done():
            receiver.set_result(_WAKE_TO_END)
        # Another task whose item was taken: it was delivered, so it returns.
        producer, self.delivered = self.delivered, None
        if producer is not None and not producer.done():
            producer.set_result(None)
        # Other tasks still waiting to hand an item over: it was never taken.
        queue, self.queue = self.queue, None
        for waiter, _ in queue or ():
            if not waiter.done():
                waiter.set_exception(
                    ChannelClosed(
                        "the sender block ended while this itemize was waiting, "
                        "so its item was not delivered; make the tasks that share "
                        "itemize finish inside the block (a task group does that)"
                    )
                )

    def close_receiver(self) -> None:
        if self.receiver_closed:
            return
        self.receiver_closed = True
        self.stash = _NOTHING
        receiver, self.receiver_waiting = self.receiver_waiting, None
        if receiver is not None and not receiver.done():
            receiver.set_result(_WAKE_TO_END)
        producer, self.delivered = self.delivered, None
        queue, self.queue = self.queue, None
        waiting = [producer] if producer is not None else []
        waiting += [waiter for waiter, _ in queue or ()]
        for waiter in waiting:
            if not waiter.done():
                waiter.set_exception(_receiver_closed())

    def end_of_stream(self) -> BaseException:
        """The exception that tells the receiver why no item will come."""
        if self.receiver_closed:
            return ChannelClosed("this receiver was closed; create a new Channel to receive again")
        if self.end is _CLEAN_END:
            return StopAsyncIteration()
        failed = SenderFailed(
            f"the sender block ended with {self.end!r}, so the stream is incomplete"
        )
        failed.__cause__ = self.end
        return failed

    def check_send(self) -> None:
        self.check_run()
        if self.end is not None:
            raise ChannelClosed(
                "itemize was called after its sender block ended; call it only "
                "inside the `async with c.sender` block (a task that shares it "
                "must finish before the block exits)"
            )
        # Not a second loop (the sender block bound the channel), not ended: so
        # the receiver was closed.
        raise _receiver_closed()

    def check_receive(self) -> None:
        self.check_run()
        if self.receiver_closed:
            raise self.end_of_stream()
        if self.receiver_waiting is not None:
            raise ChannelError(
                "another task is already waiting for an item from this receiver; "
                "a receiver has one consumer at a time (give each consumer its own "
                "channel, or fan items out from one consuming task)"
            )

    def check_run(self) -> None:
        """Bind the channel on first use; refuse a second event loop afterwards."""
        current = self.current_run()
        if current is self.run:
            return
        if self.run is not None:
            raise ChannelError(
                "this channel belongs to another event loop (or trio run); "
                "create the Channel again inside the loop that uses it"
            )
        self.run, self.current_run, self.waiters = _bind_to_running_backend()

    def describe(self) -> str:
        if self.receiver_closed:
            state = "receiver closed"
        elif self.end is None:
            state = "open" if self.sender_entered else "not started"
        elif self.end is _CLEAN_END:
            state = "ended"
        else:
            state = f"failed ({type(self.end).__name__})"
        waiting = len(self.queue or ()) + (self.delivered is not None)
        parts = [state]
        if self.receiver_waiting is not None:
            parts.append("receiver waiting")
        if waiting:
            parts.append(f"{waiting} itemize waiting")
        return ", ".join(parts)


def _receiver_closed() -> ReceiverClosed:
    return ReceiverClosed(
        "the receiver was closed, so nobody will take this item; stop producing "
        "(the sender block absorbs this exception)"
    )


# --- The backends: the only code that suspends -------------------------------------
#
# Each backend gives waiters with the part of the asyncio.Future interface that
# `_State` uses: done(), cancelled(), result(), set_result(), set_exception(), and
# `await waiter` returning the result or raising the exception. The value travels
# with the wake-up, so on trio a cancellation arriving afterwards cannot lose it;
# on asyncio `_State.receiver_cancelled` keeps such an item.

if TYPE_CHECKING:

    class _Waiter(Protocol):
        def done(self) -> bool: ...
        def cancelled(self) -> bool: ...
        def result(self) -> Any: ...
        def set_result(self, value: Any, /) -> None: ...
        def set_exception(self, exception: BaseException, /) -> None: ...
        def __await__(self) -> Any: ...

    class _WaiterFactory(Protocol):
        def create_future(self) -> _Waiter: ...


def _bind_to_running_backend() -> tuple[object, Callable[[], object], _WaiterFactory]:
    """Detect the running backend, as sniffio does, without importing any."""
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None:
        loop = asyncio.events._get_running_loop()
        if loop is not None:
            # An asyncio loop (uvloop's too) makes the futures itself.
            return loop, asyncio.events._get_running_loop, loop
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        return _trio_backend()
    raise ChannelError("a channel can only be used from a task running on asyncio, uvloop or trio")


_trio: tuple[Callable[[], object], _WaiterFactory] | None = None


def _trio_backend() -> tuple[object, Callable[[], object], _WaiterFactory]:
    global _trio
    if _trio is None:
        _trio = _make_trio_backend()
    current_run, waiters = _trio
    return current_run(), current_run, waiters


def _make_trio_backend() -> tuple[Callable[[], object], _WaiterFactory]:
    from outcome import Error, Value
    from trio.lowlevel import (
        Abort,
        current_root_task,
        current_task,
        reschedule,
        wait_task_rescheduled,
    )

    @final
    class _TrioWaiter:
        """A parked trio task, woken with ``reschedule``, shaped like an asyncio future."""

        __slots__ = ("_cancelled", "_outcome", "_task")

        def __init__(self) -> None:
            self._task = current_task()
            self._cancelled = False
            self._outcome: Value[Any] | Error | None = None

        def done(self) -> bool:
            return self._cancelled or self._outcome is not None

        def cancelled(self) -> bool:
            return self._cancelled

        def result(self) -> Any:  # pragma: no cover - trio never cancels a woken task
            assert self._outcome is not None
            return self._outcome.unwrap()

        def set_result(self, value: Any, /) -> None:
            self._outcome = Value(value)
            reschedule(self._task, self._outcome)

        def set_exception(self, exception: BaseException, /) -> None:
            self._outcome = Error(exception)
            reschedule(self._task, self._outcome)

        def __await__(self) -> Any:
            return wait_task_rescheduled(self._abort).__await__()  # noqa: ASYNC105

        def _abort(self, raise_cancel: object) -> Abort:
            # Only unlinks: the owner's `except` clause tidies the channel.
            self._cancelled = True
            return Abort.SUCCEEDED

    @final
    class _TrioWaiters:
        __slots__ = ()

        def create_future(self) -> _TrioWaiter:
            return _TrioWaiter()

    def current_trio_run() -> object:
        try:
            return current_root_task()
        except RuntimeError:  # not inside trio at all
            return None

    return current_trio_run, _TrioWaiters()
