"""Push items into an ``async for`` loop from anywhere, with the feel of a generator.

A :class:`Channel` connects a producer to a consumer with no buffer in between::

    async with c.sender as itemize:     # producer: `await itemize(x)` is `yield x`
        await itemize(item)             # and `itemize` can be handed to any coroutine

    async for item in c.receiver:       # consumer: a plain async iterator
        ...

The body of the ``async with`` block behaves like the body of an async generator
function: ``await itemize(x)`` hands ``x`` over when the receiver asks for an item
and returns when the receiver asks for the next one (with the value the receiver
sent, for ``x = yield item`` conversations), and ``await itemize.many(iterable)``
delegates like ``yield from``. A block that ends normally ends the receiver's
loop; a block that fails makes the receiver raise :exc:`SenderFailed`; a receiver
that closes makes the producer's ``itemize`` raise :exc:`ReceiverClosed`, which the
block absorbs, so the producer simply ends. Cancelling either side loses no item.
:func:`producer` runs such a block in a task of its own, structured like a
generator.

Runs on asyncio (including uvloop) and on trio, detected when a channel is first
used. Only the standard library is imported; trio is used only under trio.
"""

from __future__ import annotations

__all__ = ["Channel", "ChannelClosed", "ChannelError", "ChannelStatistics", "Itemize", "Receiver",
           "ReceiverClosed", "Sender", "SenderFailed", "producer"]  # fmt: skip
__version__ = "0.3.0"  # the only place it is written: the build reads it from here

import sys
from _thread import get_ident as _get_ident
from itertools import islice as _islice
from types import GenericAlias

TYPE_CHECKING = False  # as typing.TYPE_CHECKING, without importing typing
if TYPE_CHECKING:
    from collections import deque as _deque
    from collections.abc import (
        AsyncIterator,
        Awaitable,
        Callable,
        Coroutine,
        Generator,
        Iterable,
        Iterator,
    )
    from contextlib import AbstractAsyncContextManager
    from functools import partial as _partial
    from types import TracebackType
    from typing import Any, Concatenate, Generic, ParamSpec, Protocol, Self, final, overload

    # typing_extensions for PEP 696 defaults: `Channel[int]` means `Channel[int, None]`.
    # Only type checkers read this; they ship typing_extensions' stubs.
    from typing_extensions import TypeVar

    T = TypeVar("T")  # invariant: a Channel both takes and gives items
    T_co = TypeVar("T_co", covariant=True)  # a Receiver only gives items out
    T_contra = TypeVar("T_contra", contravariant=True)  # a Sender only takes them in
    R = TypeVar("R", default=None)  # replies: what the receiver sends back
    R_co = TypeVar("R_co", covariant=True, default=None)  # itemize only gives replies out
    R_contra = TypeVar("R_contra", contravariant=True, default=None)  # a Receiver takes them
    V = TypeVar("V")  # the return value of a generator that `many` delegates to
    Reply = TypeVar("Reply")  # R where it must be inferred (no default may precede P)
    P = ParamSpec("P")  # the parameters of a @producer function, after `itemize`
else:
    from _collections import deque as _deque  # without importing all of collections
    from _functools import partial as _partial  # ... and of functools

    # `typing` takes longer to import than this whole module. At run time these
    # names only have to let `Channel[int]`, `Itemize[str]`, ... be subscripted.
    class Generic:
        __slots__ = ()

        def __class_getitem__(cls, params):
            return cls if cls is Generic else GenericAlias(cls, params)

    Protocol = Generic
    T = T_co = T_contra = R = R_co = R_contra = None

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
class Channel(Generic[T, R]):
    """A rendezvous channel: one sender block pushes, one receiver pulls, nothing is buffered.

    ``Channel[T]`` carries items of type ``T``; ``Channel[T, R]`` also carries
    replies of type ``R`` back from the receiver (see :meth:`Receiver.asend`).
    Create it anywhere, also outside a running event loop; it binds to the event
    loop (asyncio, uvloop) or trio run that first uses it.

    Attributes:
        receiver: The consuming end, an async iterator.
    """

    __slots__ = ("_state", "receiver")

    receiver: Receiver[T, R]

    def __init__(self) -> None:
        self._state = _State()
        self.receiver = Receiver(self._state)

    @property
    def sender(self) -> Sender[T, R]:
        """The producing end, an async context manager giving ``itemize``.

        Made when asked for (an idle channel is smaller without it); every one is
        the same end of this channel.
        """
        return Sender(self._state)

    def statistics(self) -> ChannelStatistics:
        """A snapshot of the channel, to see who waits for whom when debugging a hang."""
        return self._state.statistics()

    def __repr__(self) -> str:
        return f"<Channel {self._state.statistics()}>"


class Itemize(Protocol[T_contra, R_co]):
    """The type of the callback that the sender block gives: ``await itemize(x)`` is ``yield x``.

    Contravariant in the item and covariant in the reply: an ``Itemize[object]``
    may be passed where an ``Itemize[int]`` is expected.
    """

    async def __call__(self, item: T_contra, /) -> R_co:
        """Hand ``item`` to the receiver, then wait until the receiver asks for the next one.

        Returns what the receiver sent with that request: ``None`` from
        ``__anext__``, ``value`` from ``asend(value)``, as ``x = yield item`` does.
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
        withdrawn and will never be delivered; if it had, it stays delivered. On
        trio, a call in a cancelled scope raises ``Cancelled`` before it hands the
        item over, as trio's own channels do; on asyncio the cancellation lands
        when the call waits, as with ``asyncio.Queue``.
        """
        ...

    if TYPE_CHECKING:

        @overload
        async def many(self, items: Generator[T_contra, R_co, V], /) -> V: ...  # type: ignore[overload-overlap]
        @overload
        async def many(self, items: Iterable[T_contra], /) -> None: ...

    async def many(self, items: Iterable[T_contra], /) -> Any:
        """Delegate to a synchronous iterable, like ``yield from``.

        The receiver pulls the items from ``items`` in its own task, with no trip
        through the event loop per item (it passes a scheduling point before every
        257th item, so it stays cancellable and fair). Replies sent with
        ``receiver.asend(value)`` go into ``generator.send(value)``. Returns when
        the iterable is exhausted and the receiver asks for more: with a
        generator, its return value.

        Raises:
            Exception: Whatever the iterable raises, here in the producer (not in
                the receiver's task), as ``yield from`` does; also what its
                ``close()`` raises when the delegation is stopped early.
            ReceiverClosed: The receiver was closed; a generator is closed first.
            ChannelClosed: As for ``itemize(item)``; also when the sender block
                ends while another task's ``many`` is still delegating.

        Cancellation: stops the delegation; the items already taken stay
        delivered, the rest are never pulled. However it is stopped early, this
        call closes the generator, in the producer's task. On trio, a call in a
        cancelled scope raises ``Cancelled`` before the receiver can pull anything.
        """
        ...


@final
class Sender(Generic[T_contra, R_co]):
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

    async def __aenter__(self) -> Itemize[T_contra, R_co]:
        state = self._state
        state.check_run()
        if state.end is not _NOT_STARTED:
            if state.end is None:
                raise ChannelClosed(
                    "this channel's sender block is already open; "
                    "share its itemize instead of entering the sender again"
                )
            raise ChannelClosed(
                "this channel's sender block has already ended; a channel carries "
                "one stream, so create a new Channel for another one"
            )
        state.end = None
        state.settle()
        return _itemize_of(state)

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> bool:
        state = self._state
        if exc is not None and not (state.receiver_closed and _only_receiver_closed(exc)):
            state.end_stream(exc)
            return False
        state.end_stream(_CLEAN_END)
        return exc is not None  # absorbs the receiver's stop signal

    def __repr__(self) -> str:
        return f"<Sender of channel {self._state.statistics()}>"


def _itemize_of(state: _State) -> Itemize[Any, Any]:  # noqa: PLR0915 - two hot paths
    """The ``itemize`` of one sender block (see :class:`Itemize`), and its ``many``.

    A function, not an object with ``__call__``: the hot path, and a function costs
    less to call. Its fast path runs while the channel is calm (``_State.calm``).
    """
    if not state.trio:

        async def itemize(item: object, /) -> Any:  # asyncio and uvloop
            if _running_loop() is not (loop := state.calm):
                await state.check_send()  # raises, unless the channel is only busy
                loop = state.run
            waiter = _Future(loop=loop)
            try:
                state.receiver_waiting.set_result(item)
            except (AttributeError, _InvalidStateError):  # None: it has not asked; or cancelled
                state.line_up(waiter, item)
            else:
                state.receiver_waiting = None
                state.delivered = waiter
                state.items_delivered += 1
            try:  # the reply to the next ask
                return await waiter
            except _Raise as carried:  # from athrow(): raised here, as at a `yield`
                error = carried.error
            except BaseException:
                state.withdraw(waiter)
                raise
            raise error

    else:
        withdraw_delivered = state.withdraw_delivered  # an abort_fn, made once

        async def itemize(item: object, /) -> Any:  # trio
            if _get_ident() != state.calm:
                await state.check_send()
            task = _current_task()
            receiver = state.receiver_waiting
            if receiver is None:
                state.line_up(task, item)
                abort: Any = _partial(state.withdraw, task)
            else:  # handed over, but taken back if this task's wait is aborted first
                state.receiver_waiting = None
                state.handed = state.delivered = task
                state.items_delivered += 1
                _reschedule(receiver, _Value(item))
                abort = withdraw_delivered
            try:  # the reply to the next ask
                reply = await _wait_task_rescheduled(abort)
                if state.revoked is task:  # the ask was cancelled before this task ran
                    reply = await state.take_back(task)
            except _Raise as carried:
                error = carried.error
            else:
                state.resumed = None  # the ask stands
                return reply
            raise error

    async def many(items: Iterable[Any], /) -> Any:
        await state.check_send()  # (on trio, a wait aborted at once takes the items back)
        source = _Source(iter(items))
        waiter = _current_task() if state.trio else _Future(loop=state.run)
        state.line_up(waiter, source)
        state.wake_receiver()  # a waiting receiver pulls the items itself, in its own task
        try:
            return await state.park(waiter)  # the generator's return value
        except _Raise as carried:  # the iterator's own error, or athrow()'s: it has ended
            error = carried.error
        except BaseException:
            # Whatever else stopped the delegation, the iterator is closed here, in
            # the producer, as `yield from` closes it: what close() raises comes out
            # of this call, and no other task's wake-up can be lost to it.
            close = getattr(source.iterator, "close", None)
            if close is not None:
                close()
            raise
        raise error

    itemize.many = many  # type: ignore[attr-defined]
    return itemize  # type: ignore[return-value]


@final
class Receiver(Generic[T_co, R_contra]):
    """The consuming end: ``async for item in c.receiver:``.

    Each ``__anext__`` asks for one item. Asking also lets the producer continue
    from the ``itemize`` that delivered the previous item, exactly as ``anext()``
    resumes a generator from its last ``yield``; :meth:`asend` does the same and
    gives that ``itemize`` a return value, :meth:`athrow` makes it raise. With
    :meth:`aclose`, a receiver is a ``collections.abc.AsyncGenerator``.

    Leaving early: a bare ``break`` closes nothing, as with a generator. Use
    ``async with c.receiver:`` (or ``await c.receiver.aclose()``), and the
    producer's pending and later ``itemize`` calls raise :exc:`ReceiverClosed`.

    Cancellation: a cancelled ``__anext__``, ``asend`` or batch loses no item and
    does not close the receiver. If items had already been handed over or taken
    when the cancellation arrived, the next requests return them; so ``anext()``
    under a timeout can be retried. A receiver that takes items without waiting
    (from ``itemize.many``, or from producers in line) passes a scheduling point
    before every 257th one, where a cancellation can reach it.
    """

    __slots__ = ("_state",)

    def __init__(self, state: _State) -> None:
        self._state = state

    def __aiter__(self) -> Self:
        return self

    async def asend(self, reply: R_contra | None = None, /) -> T_co:  # noqa: PLR0912, PLR0915
        """Ask for the next item and wait for it; the waiting ``itemize`` returns ``reply``.

        ``anext(receiver)`` is ``asend(None)``. The ``await itemize(item)`` (or the
        generator in ``itemize.many``) that delivered the previous item gets
        ``reply``, as ``x = yield item`` gets the value of ``agen.asend(reply)``.

        Raises:
            StopAsyncIteration: The sender block ended normally.
            SenderFailed: The sender block ended with an exception (its ``__cause__``).
                A consumer that is being cancelled meanwhile (by a scope that holds both
                sides, say) raises its cancellation instead.
            ChannelClosed: This receiver was closed (also while waiting).
            ChannelError: ``reply`` is not ``None`` before the first item, when no
                ``itemize`` waits for a reply yet; another task is already waiting
                on this receiver; or the channel belongs to another event loop.

        Cancellation: on trio, a request in a cancelled scope raises ``Cancelled``
        before it resumes a producer, takes an item or reports an end, as trio's
        own channels do. On asyncio, as with ``asyncio.Queue``, it lands at the next
        suspension. Either way no item is lost (see the class).
        """
        state = self._state
        loop = _running_loop()
        if loop is state.calm and state.receiver_waiting is None:  # asyncio's fast path
            if reply is not None and not state.items_delivered:
                state.refuse_early_reply()
            try:  # noqa: SIM105 - a try costs nothing here. The producer continues now:
                state.delivered.set_result(reply)
            except (AttributeError, _InvalidStateError):  # None yet; cancelled; resumed
                pass
            waiter = state.receiver_waiting = _Future(loop=loop)
            try:
                return await waiter  # type: ignore[no-any-return]
            except _LookAgain:  # the stream ended, or `many` is queued; the reply went
                del waiter  # (it holds the exception, whose traceback holds this frame)
            except BaseException:
                state.receiver_cancelled(waiter)
                raise
            reply = None
        elif (source := state.pulling) is not None and loop is state.run:  # asyncio, `many`
            if state.items_delivered < state.checkpoint_due and not state.delivered.done():
                try:
                    item = next(source) if reply is None else source.send(reply)
                except BaseException as exc:
                    state.end_delegation(state.delivered, exc)
                    reply = None
                else:
                    state.items_delivered += 1
                    return item  # type: ignore[no-any-return]
        elif state.trio and _get_ident() == state.calm and state.receiver_waiting is None:
            if reply is not None and not state.items_delivered:  # (trio's fast path)
                state.refuse_early_reply()
            if (producer := state.delivered) is not None:  # resumed, unless aborted first
                state.delivered, state.resumed = None, producer
                _reschedule(producer, _Value(reply))
            state.receiver_waiting = _current_task()
            try:
                item = await _wait_task_rescheduled(state.receiver_aborted)
            except _LookAgain:
                pass
            else:
                if state.handed is not _TAKEN_BACK:
                    state.handed = state.resumed = None  # the ask stands
                    return item  # type: ignore[no-any-return]
            state.handed = state.resumed = None  # its itemize was cancelled: look again
            reply = None

        # Off the fast paths: ends, misuse, the first use, producers in line, kept items,
        # a delegation on trio or at its scheduling point.
        misuse_or_end = state.outside_run() or state.end is not None or state.receiver_closed
        if misuse_or_end or state.receiver_waiting is not None:
            await state.check_receive()  # raises, unless the stream has not started or has ended
        elif state.trio:
            await _checkpoint_if_cancelled()  # trio's rule: before any effect
        if reply is not None and not state.items_delivered:
            state.refuse_early_reply()
        if state.items_delivered >= state.checkpoint_due:  # taken many without waiting
            await state.pass_scheduling_point()  # before the next: a cancellation loses nothing
        if state.revoked is not None and state.reask is _NOTHING:  # trio: see take_back
            state.reask, reply = reply, None
        while True:
            item = state.take_ready(reply)
            if item is not _NOTHING:
                return item  # type: ignore[no-any-return]
            if (state.end is not None and state.end is not _NOT_STARTED) or state.receiver_closed:
                await state.report_end()
            if not state.trio:
                waiter = state.receiver_waiting = _Future(loop=state.run)
                try:
                    item = await waiter
                except _LookAgain:
                    del waiter  # (as above)
                except BaseException:
                    state.receiver_cancelled(waiter)
                    raise
            else:
                state.receiver_waiting = _current_task()
                try:
                    item = await _wait_task_rescheduled(state.receiver_aborted)
                except _LookAgain:
                    pass
                else:
                    if state.handed is _TAKEN_BACK:  # its itemize was cancelled before this ran
                        item = _NOTHING
                state.handed = None
            state.checkpoint_due = state.items_delivered + _ITEMS_BETWEEN_CHECKPOINTS
            if item is not _NOTHING:
                return item  # type: ignore[no-any-return]
            # Woken without an item: the stream ended, or `many` is queued. The reply
            # went to the producer resumed above, so the next look passes none on.
            reply = None

    __anext__ = asend

    async def athrow(
        self,
        typ: type[BaseException] | BaseException,
        val: object = None,
        tb: TracebackType | None = None,
        /,
    ) -> T_co:
        """Raise an exception in the producer, as ``agen.athrow(exc)`` raises it at the ``yield``.

        The ``await itemize(item)`` waiting for this request raises ``exc``; during
        ``itemize.many`` it goes into the generator's ``throw()`` (an iterator with
        no ``throw()`` raises it from ``many``), as ``yield from`` does. Then, like
        :meth:`asend`, returns the next item: the producer's, if it catches ``exc``
        and goes on, or the end of the stream (``SenderFailed`` from ``exc`` if it
        ends the block). Accepts an exception, or a class with an optional value.

        Raises as :meth:`asend`, and :exc:`ChannelError` before the first item, when
        no ``itemize`` waits yet. If the ``itemize`` that delivered the last item is
        no longer waiting (it was cancelled), ``exc`` goes nowhere, as a reply
        would; if the last request was cancelled after its item was handed over,
        this one returns that item and throws nothing, as a retried ``asend``.
        """
        exc = _exception_of(typ, val, tb)
        state = self._state
        await state.check_receive()
        if state.kept is not None:
            return state.take_kept()  # type: ignore[no-any-return]
        if not state.items_delivered:
            raise ChannelError(
                "athrow() before the first item: no itemize is waiting for it yet; "
                "ask for the first item with anext() or asend(None)"
            )
        item = state.throw(exc)
        if item is not _NOTHING:
            return item  # type: ignore[no-any-return]  # the delegation caught exc
        return await self.asend()

    def batches(self, max_items: int) -> AsyncIterator[list[T_co]]:
        """Iterate in lists of up to ``max_items`` items, for consumers that work in chunks.

        Each list waits only for its first item, then takes as many more as are
        available without waiting (such as the items of ``itemize.many``). Ends,
        raises and can be cancelled as ``__anext__``. A list passes a scheduling
        point before every 257th item taken without waiting; a cancellation there
        keeps the items it took for the next request, so nothing is lost.
        """
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items!r}")
        return _Batches(self, max_items)

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

    async def __aexit__(self, *exc_info: object) -> None:
        self._state.close_receiver()

    def __repr__(self) -> str:
        return f"<Receiver of channel {self._state.statistics()}>"


@final
class _Batches(Generic[T_co]):
    """The async iterator of :meth:`Receiver.batches`."""

    __slots__ = ("_max_items", "_receiver")

    def __init__(self, receiver: Receiver[T_co, Any], max_items: int) -> None:
        self._receiver = receiver
        self._max_items = max_items

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> list[T_co]:
        batch = [await self._receiver.__anext__()]
        state = self._receiver._state  # pyright: ignore[reportPrivateUsage]
        while (room := self._max_items - len(batch)) > 0:
            if state.items_delivered >= state.checkpoint_due and state.kept is None:
                try:  # between two items: a cancellation keeps what this batch took
                    await state.pass_scheduling_point()
                except BaseException:
                    state.keep(batch)
                    raise
            if state.pulling is not None and (state.trio or not state.delivered.done()):
                state.pull_run(batch, min(room, state.checkpoint_due - state.items_delivered))
            elif (item := state.take_ready(None)) is not _NOTHING:
                batch.append(item)
            else:
                break
        return batch


@final
class ChannelStatistics:
    """A snapshot of a channel, from :meth:`Channel.statistics`.

    Attributes:
        state: ``"not started"`` (no sender block entered yet), ``"open"``,
            ``"ended"``, ``"failed"`` or ``"receiver closed"``.
        receiver_waiting: Whether a task waits in ``__anext__`` for an item.
        producers_waiting: How many ``itemize`` calls wait: for the receiver to
            take their item, or to ask for the next one.
        items_delivered: How many items the receiver has taken.
    """

    __slots__ = ("state", "receiver_waiting", "producers_waiting", "items_delivered")  # noqa: RUF023 - repr's order

    def __init__(
        self, state: str, receiver_waiting: bool, producers_waiting: int, items_delivered: int
    ) -> None:
        self.state = state
        self.receiver_waiting = receiver_waiting
        self.producers_waiting = producers_waiting
        self.items_delivered = items_delivered

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, ChannelStatistics):
            return NotImplemented
        return repr(self) == repr(other)

    __hash__ = None  # type: ignore[assignment]

    def __str__(self) -> str:
        waiting = f"{self.producers_waiting} itemize waiting" if self.producers_waiting else ""
        parts = [self.state, "receiver waiting" * self.receiver_waiting, waiting]
        return ", ".join([*filter(None, parts), f"{self.items_delivered} delivered"])

    def __repr__(self) -> str:
        fields = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.__slots__)
        return f"ChannelStatistics({fields})"


def producer(
    function: Callable[Concatenate[Itemize[T, Reply], P], Awaitable[None]],
) -> Callable[P, AbstractAsyncContextManager[Receiver[T, Reply]]]:
    """Turn a coroutine function whose first parameter is ``itemize`` into a structured producer.

    Calling the decorated function returns an async context manager. Entering it
    starts a task group of the backend (``asyncio.TaskGroup``, a trio nursery)
    with one task that runs the function in a sender block, and gives the
    channel's receiver::

        @producer
        async def ticks(itemize: Itemize[int], n: int) -> None:
            for i in range(n):
                await itemize(i)

        async with ticks(5) as items:
            async for i in items:
                ...

    - Lazy, like a generator: the function starts when the consumer first asks.
    - An exception in the function comes out of the ``async with`` as itself (an
      exception group only when there are several exceptions), not as the
      :exc:`SenderFailed` the receiver saw.
    - Leaving the ``async with`` in any way (``break``, ``return``, an exception, a
      cancellation) closes the receiver, so a producer waiting in ``itemize`` gets
      :exc:`ReceiverClosed` and nothing else (as a generator under
      ``contextlib.aclosing`` gets ``GeneratorExit``); a producer busy elsewhere is
      cancelled. Either way the ``async with`` waits for it, in the consumer's
      scopes as ``aclose()`` would: its ``finally`` blocks have run to the end when
      it exits, unless a cancellation of the consumer cut them short. Then the
      consumer's own exception, if any, comes out.
    - Several cancellations reach the consumer as one; the producer's stop
      signals never reach it.
    """

    def start(*args: P.args, **kwargs: P.kwargs) -> _Producing[T, Reply]:
        return _Producing(lambda itemize: function(itemize, *args, **kwargs))

    from functools import update_wrapper  # here, not at import: it is rarely needed

    return update_wrapper(start, function)


@final
class _Producing(Generic[T, R]):
    """The async context manager that a :func:`producer` function returns."""

    __slots__ = ("_cancelled", "_channel", "_function", "_tasks")
    _tasks: _TaskGroup  # set by __aenter__(), with:
    _cancelled: type[BaseException]  # the backend's cancellation exception

    def __init__(self, function: Callable[[Itemize[T, R]], Awaitable[None]]) -> None:
        self._function = function  # the producer function, its other arguments bound
        self._channel: Channel[T, R] | None = None

    async def __aenter__(self) -> Receiver[T, R]:
        if self._channel is not None:
            raise ChannelError(
                "this producer was already entered; call the producer function "
                "again for a new stream"
            )
        self._channel = Channel()
        backend = _running_backend()
        self._cancelled = backend.cancelled
        self._tasks = backend.task_group()
        await self._tasks.__aenter__()
        self._tasks.start(self._produce)
        return self._channel.receiver

    async def _produce(self) -> None:
        assert self._channel is not None
        try:
            async with self._channel.sender as itemize:
                await self._channel._state.wait_for_first_ask()  # pyright: ignore[reportPrivateUsage]
                await self._function(itemize)
        except BaseExceptionGroup as group:
            if not self._channel.receiver._state.receiver_closed:  # pyright: ignore[reportPrivateUsage]
                raise
            # Other errors came with the stop signals, so the sender block kept
            # the group; the stop signals mean nothing to the consumer.
            errors = group.split(ReceiverClosed)[1]
            assert errors is not None  # a group of nothing else was absorbed
            raise errors from errors.__cause__

    async def __aexit__(self, exc_type: object, exc: BaseException | None, tb: object) -> None:
        assert self._channel is not None
        state = self._channel._state  # pyright: ignore[reportPrivateUsage]
        in_itemize = state.statistics().producers_waiting > 0
        # A producer waiting in itemize ends quietly by ReceiverClosed, as a
        # generator by GeneratorExit; one busy elsewhere must be cancelled.
        state.close_receiver()
        if not in_itemize:
            self._tasks.cancel()
        # The consumer's exception is kept from the task group, which would cancel
        # the producer with it: however the consumer leaves, a producer waiting in
        # itemize ends by ReceiverClosed alone, and its cleanup runs to the end.
        errors: list[BaseException] = []
        try:
            await self._tasks.wait()
        except BaseExceptionGroup as group:
            errors = [*group.exceptions]
        if exc is not None:
            errors.append(exc)
        errors = self._what_to_raise(errors)
        if not errors or errors == [exc]:
            return  # nothing, or the consumer's own exception goes on as it is
        if len(errors) > 1:
            raise BaseExceptionGroup("unhandled errors in a producer's async with", errors)
        error = errors[0]
        try:
            raise error from error.__cause__
        finally:
            del error, errors  # no reference cycle through this frame

    def _what_to_raise(self, errors: list[BaseException]) -> list[BaseException]:
        """The exceptions the consumer should see, from the producer's and its own.

        Both sides' exceptions, a cancellation included, without the SenderFailed
        through which the receiver saw the producer's (trio copies exception groups,
        so they are matched by presence, not identity), and without cancellations
        beside a real error; several cancellations become one.
        """
        errors = [error for error in errors if not isinstance(error, SenderFailed)] or errors
        errors = list({id(error): error for error in errors}.values())  # each once
        real = [error for error in errors if not isinstance(error, self._cancelled)]
        return real or list(errors[:1])


def _exception_of(typ: object, val: object, tb: TracebackType | None) -> BaseException:
    """The exception that ``athrow(typ, val, tb)`` raises, as ``generator.throw`` makes it."""
    kind = type(typ)  # before narrowing, for the message
    if isinstance(typ, BaseException):
        if val is not None:
            raise TypeError("instance exception may not have a separate value")
        exc = typ
    elif isinstance(typ, type) and issubclass(typ, BaseException):
        exc = val if isinstance(val, typ) else typ() if val is None else typ(val)
    else:
        raise TypeError(
            "exceptions must be classes or instances deriving from BaseException, "
            f"not {kind.__name__}"
        )
    return exc if tb is None else exc.with_traceback(tb)


def _only_receiver_closed(exc: BaseException) -> bool:
    """Whether ``exc`` is ReceiverClosed, or a (nested) group of nothing else."""
    if isinstance(exc, ReceiverClosed):
        return True  # the usual case, without making a group
    # Wrapped, so that one split answers for a lone exception and a (nested) group.
    return BaseExceptionGroup("", [exc]).split(ReceiverClosed)[1] is None


# --- The shared state ------------------------------------------------------------

# Private markers, compared by identity.
_NOTHING: Any = object()  # no item ready, where None could be an item
_NOT_STARTED: Any = object()  # State.end before the sender block is entered
_CLEAN_END: Any = object()  # State.end after a sender block ended normally
_BUSY: Any = object()  # State.calm while the fast paths are closed: no loop or thread is it
_TAKEN_BACK: Any = object()  # State.handed after the producer's wait was aborted at once

# A receiver taking items without waiting (from `itemize.many`, or from many
# producers) passes a scheduling point before it takes more than this many in a row,
# to stay cancellable and fair.
_ITEMS_BETWEEN_CHECKPOINTS = 256
# Iterators that run no code of their own: a batch takes a run of their items at once.
_INERT_ITERATORS = frozenset(map(type, map(iter, ((), [], range(0), "", b""))))


class _LookAgain(BaseException):
    """Wakes a receiver with no item: the stream ended, or ``itemize.many`` is queued."""


class _Raise(BaseException):
    """Carries an exception to a waiting ``itemize`` or ``many``, which raises it as is.

    An asyncio future refuses a StopIteration, and ``many`` must know an error that
    ended its iterator (it has nothing to close) from one that stopped it.
    """

    def __init__(self, error: BaseException) -> None:
        super().__init__()
        self.error = error


@final
class _Source:
    """A queue entry of ``itemize.many``: the iterator to delegate to, in its turn."""

    __slots__ = ("iterator",)

    def __init__(self, iterator: Iterator[Any]) -> None:
        self.iterator = iterator


class _State:
    """What both ends of one channel share: the hand-over.

    In the terms of a generator: the receiver *asks* (``Receiver.asend``), which
    resumes the producer whose item it took last (``delivered``), then takes the
    next item: from the first producer waiting in ``queue``, or, if none waits, by
    parking in ``receiver_waiting`` until ``itemize`` hands one over. ``itemize``
    then parks, as ``delivered``, until the receiver asks again.

    Invariants:

    - A waiter is an asyncio future of the channel's loop, or a trio task. It is
      linked in at most one place (``receiver_waiting``, ``delivered``, ``queue``),
      and whoever wakes it unlinks it first; except that on asyncio the fast path
      leaves a resumed producer's future, done, as ``delivered`` until the next item.
    - While ``itemize.many`` delegates, ``source`` is its iterator and ``delivered``
      its waiter; each ask pulls the next item from ``source``.
    - On trio, a cancelled task unlinks itself at once (``abort_fn``), so every
      linked task is waiting. An asyncio future is cancelled before its task runs
      again to unlink it, so wakers pass over futures that are ``done()``.
    - ``end`` is ``_NOT_STARTED``, then ``None`` while the sender block is open,
      then ``_CLEAN_END`` or the exception that ended it. When it is set, and when
      the receiver closes, every waiter is woken.
    """

    __slots__ = ("calm", "checkpoint_due", "delivered", "end", "handed", "items_delivered", "kept",
                 "pulling", "queue", "reask", "receiver_closed", "receiver_waiting", "resumed",
                 "revoked", "run", "source", "thread", "trio")  # fmt: skip

    def __init__(self) -> None:
        self.trio = False  # whether the backend is trio
        self.run: Any = None  # the bound asyncio loop, or the root task of the bound trio run
        self.thread: int | None = None  # the thread that runs it
        self.receiver_waiting: Any = None  # the waiter of the receiver, parked in `asend`
        self.delivered: Any = None  # the waiter of the producer whose item was taken last
        # Producers waiting to hand over an item, or a _Source of `itemize.many`:
        self.queue: _deque[tuple[Any, Any]] | None = None
        self.source: Iterator[Any] | None = None  # what `many` delegates to, while it does
        # Items taken by a request that was cancelled before it returned them (on asyncio,
        # an item that reached a cancelled receiver; a batch cut short): the next go first.
        self.kept: _deque[Any] | None = None
        self.end: Any = _NOT_STARTED
        self.receiver_closed = False
        self.items_delivered = 0
        # The receiver passes a scheduling point before it takes more items without
        # waiting once `items_delivered` reaches this; each wait moves it on.
        self.checkpoint_due = _ITEMS_BETWEEN_CHECKPOINTS
        # The fast paths' one test. While the channel is calm (open, nothing in line,
        # delegated or kept), `calm` is what identifies where it may be used: its
        # asyncio loop, or the thread of its trio run; else _BUSY, which nothing is.
        # While `itemize.many` delegates and nothing else is special, `pulling` is
        # its iterator. `settle()` sets both after every change off the fast paths.
        self.calm: Any = _BUSY
        self.pulling: Any = None  # an iterator; a generator also has send()
        # trio's rule: an operation in a cancelled scope has no effect. The fast paths
        # act, then park, and if the park is aborted at once, they take the act back.
        # `handed`: the producer whose item is on its way to the receiver; `resumed`: the
        # producer that an ask resumed, before it has run; `revoked`: that producer, when
        # the ask was then cancelled (it waits again); `reask`: the reply of an ask since.
        self.handed: Any = None
        self.resumed: Any = None
        self.revoked: Any = None
        self.reask: Any = _NOTHING

    # Parking and waking, for the paths off the hot ones (which inline them).

    async def park(self, waiter: Any) -> Any:
        """Wait as a producer until woken: unlinked at once if the wait is interrupted."""
        try:
            if not self.trio:
                return await waiter
            return await _wait_task_rescheduled(_partial(self.withdraw, waiter))
        except _Raise:
            raise
        except BaseException:
            self.withdraw(waiter)
            raise

    def waiting(self, waiter: Any) -> bool:
        """Whether a linked waiter still waits (an asyncio future may be cancelled)."""
        return self.trio or not waiter.done()

    def wake(self, waiter: Any, value: Any) -> None:
        if self.trio:
            _reschedule(waiter, _Value(value))
        elif not waiter.done():
            waiter.set_result(value)

    def fail(self, waiter: Any, error: BaseException) -> None:
        if self.trio:
            _reschedule(waiter, _Error(error))
        elif not waiter.done():
            waiter.set_exception(error)

    def receiver_aborted(self, _: object) -> Any:
        """trio's ``abort_fn`` for the receiver: unlink it, and take back its ask if the
        producer it resumed has not run yet (see ``resumed``)."""
        self.receiver_waiting = None
        if self.resumed is not None:
            self.revoked, self.resumed = self.resumed, None
            self.calm = _BUSY
        return _aborted

    async def take_back(self, task: Any) -> Any:
        """trio: the ask that resumed ``task`` was cancelled before the task ran, so it
        waits for the next one, unless one came meanwhile or the stream ended."""
        reply = None
        while self.revoked is task:
            self.revoked, reply, self.reask = None, self.reask, _NOTHING
            self.settle()
            await _checkpoint_if_cancelled()
            if type(reply) is _Raise:  # athrow() asked meanwhile
                try:
                    raise reply
                finally:
                    del reply  # no reference cycle through this frame
            if reply is not _NOTHING:
                return reply
            if self.receiver_closed:
                raise _receiver_closed()
            if self.end is not None:  # another task ended the block: delivered, it returns
                return None
            self.delivered = task
            reply = await self.park(task)
        return reply

    def settle(self) -> None:
        """Open or close the fast paths after a change off them (see ``calm``)."""
        flowing = not (self.end or self.receiver_closed or self.kept or self.revoked)
        here = self.thread if self.trio else self.run
        self.calm = here if flowing and not self.queue and self.source is None else _BUSY
        self.pulling = self.source if flowing else None

    def line_up(self, waiter: Any, entry: Any) -> None:
        """Wait in line to hand over an item, or a _Source of ``itemize.many``."""
        if self.queue is None:
            self.queue = _deque()
        self.queue.append((waiter, entry))
        self.calm = _BUSY

    def receiver_cancelled(self, waiter: Any) -> None:
        """Unlink the receiver's future; keep an item that reached it too late."""
        if self.receiver_waiting is waiter:
            self.receiver_waiting = None
        elif waiter.done() and not waiter.cancelled() and waiter.exception() is None:
            self.keep([waiter.result()])

    def keep(self, items: list[Any]) -> None:
        self.kept = _deque(items)
        self.settle()

    def withdraw_delivered(self, _: object) -> Any:
        """trio's ``abort_fn`` of the producer that handed the last item over."""
        return self.withdraw(self.delivered)

    def withdraw(self, waiter: Any, _: object = None) -> Any:
        """Unlink a producer whose wait was interrupted; to trio, its abort succeeded.

        On trio, an item handed over that the receiver has not taken yet (it has not run
        since) is taken back too (see ``handed``).
        """
        if self.delivered is waiter:
            self.delivered = self.source = None
            if self.handed is waiter:
                self.handed = _TAKEN_BACK
                self.items_delivered -= 1
        elif self.queue:
            for entry in self.queue:
                if entry[0] is waiter:
                    self.queue.remove(entry)
                    break
        self.settle()
        return _aborted

    def wake_receiver(self) -> None:
        """Wake a waiting receiver with no item, to look at the channel again."""
        receiver, self.receiver_waiting = self.receiver_waiting, None
        if receiver is not None:
            self.fail(receiver, _LookAgain())

    # The hand-over.

    async def wait_for_first_ask(self) -> None:
        """Park a producer until the receiver first asks, as a new generator waits."""
        if self.receiver_closed:  # closed before the producer ran: it never starts
            raise _receiver_closed()
        if self.receiver_waiting is not None:  # it asked before the producer ran
            return
        # The first ask wakes it, as an itemize:
        waiter = self.delivered = _current_task() if self.trio else _Future(loop=self.run)
        await self.park(waiter)
        if self.revoked is waiter:  # trio: that ask was cancelled before this ran
            await self.take_back(waiter)
        self.resumed = None

    def take_ready(self, reply: Any) -> Any:
        """Ask without waiting: the next item if one is ready, else ``_NOTHING``."""
        if self.kept is not None:  # taken by a request that was cancelled: it goes first
            return self.take_kept()
        while True:
            source: Any = self.source  # an iterator; a generator also has send()
            waiter = self.delivered
            if source is None:
                self.delivered = None
                if waiter is not None:
                    self.wake(waiter, reply)  # it continues after its `itemize` now
            elif self.trio or not waiter.done():  # `waiting`, inlined: per item
                try:
                    item = next(source) if reply is None else source.send(reply)
                except BaseException as exc:
                    self.end_delegation(waiter, exc)
                else:
                    self.items_delivered += 1
                    return item
            else:  # the `many` call was cancelled; it closes its iterator itself
                self.source = self.delivered = None
            # The next producer in line, if any.
            reply = None
            while self.queue:
                waiter, item = self.queue.popleft()
                if self.waiting(waiter):
                    break
            else:
                self.settle()
                return _NOTHING
            self.delivered = waiter
            if type(item) is _Source:
                self.source = item.iterator
                self.settle()
                continue
            self.items_delivered += 1
            self.settle()
            return item

    def pull_run(self, batch: list[Any], run: int) -> None:
        """Pull up to ``run`` items of a delegation into ``batch``, in one loop."""
        source: Any = self.source
        producer, taken = self.delivered, len(batch)
        if type(source) in _INERT_ITERATORS:  # it runs no code: one C-level step
            batch += _islice(source, run)
            if len(batch) - taken < run:
                self.end_delegation(producer, StopIteration())
        else:
            try:
                for _ in range(run):
                    batch.append(next(source))
                    if self.source is not source:  # its generator closed the receiver
                        break
            except BaseException as exc:
                self.end_delegation(producer, exc)
        self.items_delivered += len(batch) - taken

    async def pass_scheduling_point(self) -> None:
        """Let the other tasks run, and a cancellation reach the receiver, between two items."""
        try:
            await self.scheduling_point()
        finally:  # passed, also if a cancellation was delivered there
            self.checkpoint_due = self.items_delivered + _ITEMS_BETWEEN_CHECKPOINTS

    def take_kept(self) -> Any:
        """The first of the items kept for the next request."""
        kept: Any = self.kept
        item = kept.popleft()
        if not kept:
            self.kept = None
            self.settle()
        return item

    def end_delegation(self, waiter: Any, exc: BaseException) -> None:
        """The delegated iterator ended: ``many`` returns its value or raises ``exc``."""
        self.source = self.delivered = None
        self.settle()
        if isinstance(exc, StopIteration):
            self.wake(waiter, exc.value)
        else:  # raised in the producer, as `yield from` does
            self.fail(waiter, _Raise(exc))

    def throw(self, exc: BaseException) -> Any:
        """Raise ``exc`` where the producer waits: the next item if a delegation yields one."""
        producer = self.delivered
        if producer is None or not self.waiting(producer):
            if self.revoked is not None and self.reask is _NOTHING:  # trio: see take_back
                self.reask = _Raise(exc)
            return _NOTHING
        throw = getattr(self.source, "throw", None)
        if throw is None:  # an itemize, or an iterator that cannot take it
            self.delivered = self.source = None
            self.settle()
            self.fail(producer, _Raise(exc))
            return _NOTHING
        try:
            item = throw(exc)
        except BaseException as error:
            self.end_delegation(producer, error)
            return _NOTHING
        self.items_delivered += 1
        return item

    def end_stream(self, end: Any) -> None:
        """The sender block exited: wake everybody who waits on it."""
        self.end = end
        self.wake_everybody(_block_ended)

    def close_receiver(self) -> None:
        if not self.receiver_closed:
            self.receiver_closed, self.kept = True, None
            self.wake_everybody(_receiver_closed)

    def wake_everybody(self, error: Callable[[], BaseException]) -> None:
        """The stream is over: the receiver looks again; producers in line get ``error()``
        (their items were never taken), as does the one delivered last, unless the
        block ended while it waited for the next ask: its item was delivered, it returns."""
        self.calm, self.pulling = _BUSY, None
        self.wake_receiver()
        producer, self.delivered, queue, self.queue = self.delivered, None, self.queue, None
        if producer is not None and (self.receiver_closed or self.source is not None):
            self.fail(producer, error())  # (a `many` call closes its own iterator)
        elif producer is not None:
            self.wake(producer, None)
        self.source = None
        for waiter, _ in queue or ():
            self.fail(waiter, error())

    # Ends and misuse: the slow paths.

    async def report_end(self) -> None:
        """Raise why no item will come, once a cancellation of the receiver could reach it.

        A scope that holds both sides cancels the producer and the receiver at once, and
        the producer's block may end first: the receiver must raise its own cancellation
        then, not SenderFailed from the producer's. On trio a cancellation is checked for;
        on asyncio it lands only when a task suspends, so a failed end suspends once.
        """
        if self.trio:
            await _checkpoint_if_cancelled()
        elif self.end is not _CLEAN_END and not self.receiver_closed:
            await self.scheduling_point()
        if self.receiver_closed:
            raise ChannelClosed("this receiver was closed; create a new Channel to receive again")
        if self.end is _CLEAN_END:
            raise StopAsyncIteration
        message = f"the sender block ended with {self.end!r}, so the stream is incomplete"
        raise SenderFailed(message) from self.end

    async def check_send(self) -> None:
        """Off the fast path: refuse ``itemize`` or ``many`` (another loop, the block ended,
        the receiver closed), unless the channel is only busy."""
        if not (self.outside_run() or self.end is not None or self.receiver_closed):
            return
        self.check_run()
        if self.trio:
            await _checkpoint_if_cancelled()  # trio's rule: cancelled first
        if self.end is not None:
            raise ChannelClosed(
                "itemize was called after its sender block ended; call it only "
                "inside the `async with c.sender` block (a task that shares it "
                "must finish before the block exits)"
            )
        raise _receiver_closed()  # right loop, block open: so the receiver was closed

    async def check_receive(self) -> None:
        """The checks of a request off the hot path; on trio, a cancellation first."""
        self.check_run()
        if self.trio:
            await _checkpoint_if_cancelled()
        if self.receiver_closed:
            await self.report_end()
        if self.receiver_waiting is not None:
            raise ChannelError(
                "another task is already waiting for an item from this receiver; "
                "a receiver has one consumer at a time (give each consumer its own "
                "channel, or fan items out from one consuming task)"
            )

    def refuse_early_reply(self) -> None:
        raise ChannelError(
            "asend() with a value before the first item: no itemize is waiting for "
            "a reply yet; ask for the first item with anext() or asend(None)"
        )

    def outside_run(self) -> bool:
        """Whether the caller may run outside the bound loop or trio run: then ``check_run``."""
        return self.thread != _get_ident() or not (self.trio or self.run.is_running())

    def check_run(self) -> None:
        """Bind the channel on first use; refuse another event loop afterwards.

        The fast paths compare only what ``calm`` holds: the bound loop (which runs
        in one thread at a time), or on trio the thread. On trio that suffices: a
        trio run waits for all its tasks, so a channel bound to a run that is over
        has ended, or has not started (a receiver then takes this path).
        """
        if self.run is None:
            backend = _running_backend()
            self.trio, self.run, self.thread = backend.trio, backend.current_run(), _get_ident()
        elif _backends["trio" if self.trio else "asyncio"].current_run() is not self.run:
            raise ChannelError(
                "this channel belongs to another event loop (or trio run); "
                "create the Channel again inside the loop that uses it"
            )

    def scheduling_point(self) -> Awaitable[None]:
        return _checkpoint() if self.trio else _sleep(0)  # type: ignore[no-any-return]

    def statistics(self) -> ChannelStatistics:
        names = {_NOT_STARTED: "not started", None: "open", _CLEAN_END: "ended"}
        state = "receiver closed" if self.receiver_closed else names.get(self.end, "failed")
        waiting = sum(self.waiting(waiter) for waiter, _ in self.queue or ())
        waiting += self.delivered is not None and self.waiting(self.delivered)
        return ChannelStatistics(
            state, self.receiver_waiting is not None, waiting, self.items_delivered
        )


def _receiver_closed() -> ReceiverClosed:
    return ReceiverClosed(
        "the receiver was closed, so nobody will take this item; stop producing "
        "(the sender block absorbs this exception)"
    )


def _block_ended() -> ChannelClosed:
    return ChannelClosed(
        "the sender block ended while this itemize was waiting, so its item was "
        "not delivered; make the tasks that share itemize finish inside the block "
        "(a task group does that)"
    )


# --- The backends: the only code that depends on the event loop library --------------
#
# A channel parks a task on an asyncio future of its loop, or, on trio, with
# `wait_task_rescheduled`, and wakes it with `set_result`/`set_exception` or with
# `reschedule(task, Value(v))`/`Error(e)`. The value travels with the wake-up, so on
# trio a cancellation arriving afterwards cannot lose it; on asyncio
# `_State.receiver_cancelled` keeps such an item.

if TYPE_CHECKING:

    class _TaskGroup(Protocol):
        """The backend's own task group, running one producer task that can be cancelled."""

        async def __aenter__(self) -> object: ...
        async def wait(self) -> None:
            """Wait until the producer task has ended; raise a group of what it raised."""

        def start(self, function: Callable[[], Coroutine[Any, Any, None]]) -> None: ...
        def cancel(self) -> None: ...


@final
class _Backend:
    """What the rest of the module needs of one event loop library."""

    __slots__ = ("cancelled", "current_run", "task_group", "trio")

    def __init__(
        self,
        current_run: Callable[[], object],
        task_group: Callable[[], _TaskGroup],
        cancelled: type[BaseException],
        trio: bool = False,
    ) -> None:
        self.current_run = current_run  # the running loop or trio run, or None
        self.task_group = task_group
        self.cancelled = cancelled  # the exception a cancelled task raises
        self.trio = trio


_backends: dict[str, _Backend] = {}


# The backends' own primitives, bound when a backend is made, for the hot paths to
# call directly (until then no channel uses that backend, and they are not called).
# asyncio: plain futures (the channel's own, which no user code sees). trio: a task
# parks with wait_task_rescheduled and is woken with reschedule, the value (outcome's
# Value or Error) travelling with the wake-up.
_running_loop: Callable[[], object] = lambda: None  # noqa: E731
_Future: Any = None
_InvalidStateError: Any = None
_sleep: Any = None
_current_task: Any = None
_checkpoint: Any = None
_checkpoint_if_cancelled: Any = None
_reschedule: Any = None
_wait_task_rescheduled: Any = None
_Value: Any = None
_Error: Any = None
_aborted: Any = None


def _running_backend() -> _Backend:
    """Detect the running backend, as sniffio does, without importing any."""
    # trio first: in guest mode, trio runs inside a running asyncio loop.
    trio = sys.modules.get("trio")
    if trio is not None and trio.lowlevel.in_trio_task():
        if "trio" not in _backends:
            _backends["trio"] = _make_trio_backend()
        return _backends["trio"]
    asyncio = sys.modules.get("asyncio")
    if asyncio is not None and asyncio.events._get_running_loop() is not None:
        if "asyncio" not in _backends:
            _backends["asyncio"] = _make_asyncio_backend()
        return _backends["asyncio"]
    raise ChannelError("a channel can only be used from a task running on asyncio, uvloop or trio")


def _make_asyncio_backend() -> _Backend:
    import asyncio

    global _running_loop, _Future, _InvalidStateError, _sleep
    _running_loop = asyncio.events._get_running_loop
    _Future, _InvalidStateError, _sleep = asyncio.Future, asyncio.InvalidStateError, asyncio.sleep

    @final
    class _AsyncioTaskGroup:
        __slots__ = ("_group", "_task")
        _task: asyncio.Task[None]  # set by start()

        def __init__(self) -> None:
            self._group = asyncio.TaskGroup()

        async def __aenter__(self) -> object:
            return await self._group.__aenter__()

        async def wait(self) -> None:
            await self._group.__aexit__(None, None, None)

        def start(self, function: Callable[[], Coroutine[Any, Any, None]]) -> None:
            self._task = self._group.create_task(function())

        def cancel(self) -> None:
            self._task.cancel()

    return _Backend(asyncio.events._get_running_loop, _AsyncioTaskGroup, asyncio.CancelledError)


def _make_trio_backend() -> _Backend:
    import outcome
    import trio

    global _current_task, _checkpoint, _checkpoint_if_cancelled, _reschedule
    global _wait_task_rescheduled, _Value, _Error, _aborted
    lowlevel = trio.lowlevel
    _current_task, _checkpoint = lowlevel.current_task, lowlevel.checkpoint
    _checkpoint_if_cancelled, _reschedule = lowlevel.checkpoint_if_cancelled, lowlevel.reschedule
    _wait_task_rescheduled, _aborted = lowlevel.wait_task_rescheduled, lowlevel.Abort.SUCCEEDED
    _Value, _Error = outcome.Value, outcome.Error

    @final
    class _TrioTaskGroup:
        __slots__ = ("_manager", "_nursery", "_scope")
        _nursery: trio.Nursery  # set by __aenter__()

        def __init__(self) -> None:
            self._manager = trio.open_nursery()
            # Shielded from the consumer's scopes while the consumer is inside the
            # `async with`, as a generator's body runs only when its consumer resumes it.
            self._scope = trio.CancelScope(shield=True)

        async def __aenter__(self) -> object:
            self._nursery = await self._manager.__aenter__()
            return self._nursery

        async def wait(self) -> None:
            # The consumer waits for the producer's cleanup now: its cancellations,
            # pending or to come, reach that cleanup, as they reach a generator's
            # cleanup run by aclose() in the consumer's scope.
            self._scope.shield = False
            await self._manager.__aexit__(None, None, None)

        def start(self, function: Callable[[], Coroutine[Any, Any, None]]) -> None:
            async def run() -> None:
                with self._scope:
                    await function()

            self._nursery.start_soon(run)

        def cancel(self) -> None:
            self._scope.cancel()

    def current_run() -> object:
        try:
            return trio.lowlevel.current_root_task()
        except RuntimeError:  # not inside trio at all
            return None

    return _Backend(current_run, _TrioTaskGroup, trio.Cancelled, trio=True)
