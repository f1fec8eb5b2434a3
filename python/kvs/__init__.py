"""kvs: a key-value storage engine for large values, from Python.

Every call goes through the library's C ABI (``kvs.h``) with cffi, which releases the GIL
for the duration of each call into the library, so several Python threads read and
write in parallel.

    import kvs

    with kvs.open("/tmp/store", buffer_size=64 << 20) as store:
        store[b"photo"] = data
        assert store.get(b"photo") == data
        for key in store.keys(prefix=b"ph"):
            ...

Keys and values are bytes-like objects (bytes, bytearray, memoryview); ``str`` keys are
encoded as UTF-8. Keys are 1 to 4096 bytes; values up to the store's ``max_value_size``
(5 MiB by default, up to 256 MiB when the store is created for it).

Errors raise ``kvs.Error`` or one of its subclasses, each carrying the C status code
(``code``), the message (``message``, also ``str(e)``) and the operating system's error
number when there was one (``errno``).
"""

from __future__ import annotations

import math
import os
import threading
import weakref

from ._kvs import ffi, lib

__all__ = [
    "open",
    "Store",
    "Error",
    "InvalidArgumentError",
    "TooLargeError",
    "IoError",
    "CorruptionError",
    "NoSpaceError",
    "LockedError",
    "FailedError",
    "UnsupportedVersionError",
    "IndexFullError",
    "version",
]


def version() -> str:
    """The version of the kvs library loaded, e.g. ``"1.0.0"``."""
    return ffi.string(lib.kvs_version_string()).decode()


class Error(Exception):
    """A kvs call failed. ``code`` is the C status code (a negative ``KVS_ERR_*``),
    ``message`` says what and why, ``errno`` is the operating system's error number (0
    if there was none)."""

    def __init__(self, code: int, message: str, errno: int = 0):
        super().__init__(message)
        self.code = code
        self.message = message
        self.errno = errno


class InvalidArgumentError(Error):
    """A bad argument (an empty or over-long key, an option out of range); nothing
    changed."""


class TooLargeError(Error):
    """A value over the store's max_value_size; nothing changed."""


class IoError(Error):
    """An I/O error that changed nothing (a failed read, a file that could not be
    opened)."""


class CorruptionError(Error):
    """A record failed its checks; its bytes are never returned."""


class NoSpaceError(Error):
    """The device is full; nothing changed and acknowledged data stays readable."""


class LockedError(Error):
    """Another process (or handle) has the store open."""


class FailedError(Error):
    """The store has failed (a write or fdatasync failed) and must be reopened; gets
    still work."""


class UnsupportedVersionError(Error):
    """The store's files have a format this library does not read."""


class IndexFullError(Error):
    """The index holds as many records as it can (2^32 - 2); nothing changed."""


_CLASSES = {
    lib.KVS_ERR_INVALID_ARGUMENT: InvalidArgumentError,
    lib.KVS_ERR_TOO_LARGE: TooLargeError,
    lib.KVS_ERR_IO: IoError,
    lib.KVS_ERR_CORRUPTION: CorruptionError,
    lib.KVS_ERR_NO_SPACE: NoSpaceError,
    lib.KVS_ERR_LOCKED: LockedError,
    lib.KVS_ERR_FAILED: FailedError,
    lib.KVS_ERR_UNSUPPORTED_VERSION: UnsupportedVersionError,
    lib.KVS_ERR_INDEX_FULL: IndexFullError,
    lib.KVS_ERR_OPTIONS_SIZE: InvalidArgumentError,
}


def _error(code: int) -> Error:
    """The exception for a failed call's `code`, with this thread's last error."""
    n = ffi.new("size_t *")
    lib.kvs_last_error(ffi.NULL, 0, n)
    buf = ffi.new("char[]", n[0] + 1)
    lib.kvs_last_error(buf, n[0] + 1, n)
    message = ffi.string(buf).decode("utf-8", "replace") or ffi.string(
        lib.kvs_strerror(code)
    ).decode()
    return _CLASSES.get(code, Error)(code, message, lib.kvs_last_errno())


def _check(code: int) -> int:
    if code < 0:
        raise _error(code)
    return code


def _data(obj, what: str):
    """`obj` (bytes-like, or str for keys) as bytes for a C argument: (bytes, length).
    Any buffer other than bytes is copied first: each call releases the GIL, and a
    bytearray another thread writes into meanwhile would otherwise be stored with a
    checksum that does not match it (every later get of the key failing with
    CorruptionError), or a tombstone torn the same way (found by review: `put` copied,
    `delete` did not). Copying also takes buffers of any layout (a strided or Fortran-
    ordered view)."""
    if type(obj) is bytes:
        # cffi passes a bytes object's own buffer to a `const void *` argument.
        return obj, len(obj)
    if isinstance(obj, str):
        if what != "key":
            raise TypeError(f"a {what} must be bytes-like, not str")
        obj = obj.encode("utf-8")
        return obj, len(obj)
    try:
        obj = memoryview(obj).tobytes()
    except TypeError:
        raise TypeError(
            f"a {what} must be bytes, bytearray, memoryview"
            + (" or str" if what == "key" else "")
            + f", not {type(obj).__name__}"
        ) from None
    return obj, len(obj)


_U64_MAX = (1 << 64) - 1

# Options whose 0 turns something off (Rust's meaning), passed to C as UINT64_MAX: the
# checkpoint triggers (off) and reclaim_rate (no limit).
_ZERO_IS_OFF = {"checkpoint_bytes", "checkpoint_interval_ms", "reclaim_rate"}

_OPTIONS = {
    "buffer_size",
    "flush_horizon",
    "flush_interval_ms",
    "expected_records",
    "max_value_size",
    "checkpoint_bytes",
    "checkpoint_interval_ms",
    "file_mode",
    "segment_size",
    "reclaim_threshold",
    "reclaim_urgent",
    "reclaim_rate",
}
_FLAGS = {
    "direct_io": "disable_direct_io",
    "direct_reads": "disable_direct_reads",
    "background_reclaim": "disable_background_reclaim",
}
_DURABILITY = {
    "none": lib.KVS_DURABILITY_NONE,
    "batch": lib.KVS_DURABILITY_BATCH,
    "always": lib.KVS_DURABILITY_ALWAYS,
}


def _options(options: dict):
    o = ffi.new("kvs_options *")
    _check(lib.kvs_options_init(o, ffi.sizeof("kvs_options")))
    for name, value in options.items():
        if name in _OPTIONS:
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise TypeError(f"option {name} takes a number, not {type(value).__name__}")
            if value < 0:
                raise ValueError(f"option {name} cannot be negative ({value})")
            if value == 0:
                # The C struct's 0 means "the default": 0 given here means what it does in
                # Rust (found by review: reclaim_rate=0 gave 256 MiB/s, not "no limit").
                if name not in _ZERO_IS_OFF:
                    raise ValueError(
                        f"option {name} cannot be 0 (leave it out for the default)"
                    )
                value = _U64_MAX
            if math.isinf(value) or math.isnan(value):
                raise ValueError(f"option {name} must be finite ({value})")
            if name.startswith("reclaim_t") or name == "reclaim_urgent":
                setattr(o, name, float(value))
            else:
                if value != int(value):
                    raise TypeError(f"option {name} takes a whole number, not {value}")
                if int(value) >= 1 << 64:
                    raise ValueError(f"option {name} is too large ({value})")
                setattr(o, name, int(value))
        elif name in _FLAGS:
            if not isinstance(value, bool):
                raise TypeError(f"option {name} takes True or False")
            setattr(o, _FLAGS[name], 0 if value else 1)
        elif name == "durability":
            if value not in _DURABILITY:
                raise ValueError(
                    f"durability must be one of {sorted(_DURABILITY)}, not {value!r}"
                )
            o.durability = _DURABILITY[value]
        else:
            raise TypeError(f"unknown option {name!r}")
    return o


def open(path, **options) -> "Store":
    """Opens (creating if missing) the store in directory `path`. Options, all optional:
    buffer_size, flush_horizon, flush_interval_ms, expected_records, max_value_size,
    direct_io, direct_reads, durability ("none", "batch", "always"), checkpoint_bytes,
    checkpoint_interval_ms, file_mode, segment_size, background_reclaim,
    reclaim_threshold, reclaim_urgent, reclaim_rate (see the C header or the Rust
    documentation for each). As in Rust, 0 turns checkpoint_bytes and
    checkpoint_interval_ms off and means no limit for reclaim_rate; 0 for another option
    is a ValueError (leave it out for the default). Raises LockedError if another process
    has it open."""
    return Store(path, **options)


_local = threading.local()

# A reader thread keeps its value buffer between gets up to this size.
_KEPT_BUFFER = 8 << 20
_FIRST_BUFFER = 128 << 10


def _take():
    """A value buffer and a size_t[2] for one call, this thread's spare ones if it has
    them. They are the call's alone until `_give` returns them: a call nested in it (a
    signal handler or a finaliser that runs a get between the C call and the copy out)
    takes others (found by review: shared slots let it overwrite the outer call's length,
    which then read past its buffer)."""
    spare = _local.__dict__.pop("spare", None)
    if spare is not None:
        return spare
    return ffi.new("char[]", _FIRST_BUFFER), ffi.new("size_t[2]")


def _give(buf, n) -> None:
    """Keeps `buf` and `n` as this thread's spare ones (a buffer up to `_KEPT_BUFFER`)."""
    if len(buf) <= _KEPT_BUFFER:
        _local.spare = (buf, n)


def _fork_error():
    return ValueError(
        "this kvs store was opened by another process (before a fork): open it again here"
    )


class _Unshareable:
    """Refuses copies and pickling: a copy would share the C handle and close it twice
    (found by review)."""

    def __copy__(self):
        raise TypeError(f"a {type(self).__name__} cannot be copied; share the one object")

    def __deepcopy__(self, memo):
        self.__copy__()

    def __reduce__(self):
        raise TypeError(f"a {type(self).__name__} cannot be pickled")


class Store(_Unshareable):
    """An open store. Use it from any number of threads; ``close`` waits for the calls
    in flight. Also a context manager, and a mapping: ``store[k]``, ``store[k] = v``,
    ``del store[k]`` (KeyError if absent), ``k in store``, ``len(store)``, iteration over
    the keys."""

    def __init__(self, path, **options):
        self._db = ffi.NULL
        # The process that opened it: after a fork the child has none of the library's
        # threads, so it must neither use the handle nor close it (a close would wait
        # for ever on threads that are not there).
        self._pid = os.getpid()
        self._cond = threading.Condition(threading.Lock())
        self._users = 0
        # A close is under way; kvs_close has returned (a second close waits for it).
        self._closing = False
        self._closed = False
        self._iters: "weakref.WeakSet[_Keys]" = weakref.WeakSet()
        o = _options(options)
        path_bytes = os.fsencode(path)
        if b"\0" in path_bytes:
            raise ValueError("embedded null byte in the path")
        out = ffi.new("kvs_t **")
        _check(lib.kvs_open(path_bytes, o, out))
        self._db = out[0]
        self.path = os.fspath(path)

    # Calls in flight hold the handle; close waits for them.
    def _enter(self):
        with self._cond:
            if self._db == ffi.NULL:
                raise ValueError("the kvs store is closed")
            if os.getpid() != self._pid:
                raise _fork_error()
            self._users += 1
            return self._db

    def _leave(self):
        with self._cond:
            self._users -= 1
            if self._users == 0:
                self._cond.notify_all()

    def put(self, key, value) -> None:
        """Stores `value` under `key`, replacing any old value. A bytearray or
        memoryview is copied first, so another thread may go on writing into it."""
        k, kn = _data(key, "key")
        v, vn = _data(value, "value")
        db = self._enter()
        try:
            _check(lib.kvs_put(db, k, kn, v, vn))
        finally:
            self._leave()

    def get(self, key, default=None):
        """The value of `key` as bytes, or `default` if absent."""
        k, kn = _data(key, "key")
        # Taken before the handle: an exception in between (Ctrl-C, no memory) must not
        # leave the call counted, or close would wait for it for ever.
        buf, n = _take()
        db = self._enter()
        try:
            while True:
                rc = lib.kvs_get(db, k, kn, buf, len(buf), n)
                if rc == lib.KVS_OK:
                    return ffi.unpack(buf, n[0])
                if rc == lib.KVS_NOT_FOUND:
                    return default
                if rc != lib.KVS_ERR_BUFFER_TOO_SMALL:
                    raise _error(rc)
                buf = ffi.new("char[]", n[0])
        finally:
            _give(buf, n)
            self._leave()

    def value_len(self, key):
        """The length of `key`'s value, or None if absent, without reading the value."""
        k, kn = _data(key, "key")
        n = ffi.new("size_t *")
        db = self._enter()
        try:
            rc = _check(lib.kvs_value_len(db, k, kn, n))
        finally:
            self._leave()
        return n[0] if rc == lib.KVS_OK else None

    def delete(self, key) -> bool:
        """Removes `key`; True if it was there."""
        k, kn = _data(key, "key")
        db = self._enter()
        try:
            return _check(lib.kvs_delete(db, k, kn)) == lib.KVS_OK
        finally:
            self._leave()

    def write(self, ops) -> None:
        """Applies puts and deletes atomically: gets see all of them or none, and after a
        crash a reopen shows all of them or none; durable as `put` is. `ops` is a mapping
        or an iterable of (key, value) pairs, a value of None meaning a delete; a later
        operation on a key wins over an earlier one. On an error (a bad key or value, a
        value over the store's max_value_size, a batch larger than a log segment or the
        write buffer) nothing changed."""
        items = ops.items() if hasattr(ops, "items") else ops
        b = lib.kvs_batch_new()
        if b == ffi.NULL:
            raise _error(lib.KVS_ERR_PANIC)
        try:
            for item in items:
                try:
                    key, value = item
                except (TypeError, ValueError):
                    raise TypeError(
                        "a batch operation is a (key, value) pair, value None to delete, "
                        f"not {item!r:.60}"
                    ) from None
                k, kn = _data(key, "key")
                if value is None:
                    _check(lib.kvs_batch_delete(b, k, kn))
                else:
                    v, vn = _data(value, "value")
                    _check(lib.kvs_batch_put(b, k, kn, v, vn))
            db = self._enter()
            try:
                _check(lib.kvs_batch_write(db, b))
            finally:
                self._leave()
        finally:
            lib.kvs_batch_free(b)

    def _call(self, fn, *args):
        db = self._enter()
        try:
            return _check(fn(db, *args))
        finally:
            self._leave()

    def sync(self) -> None:
        """Makes every put and delete so far durable."""
        self._call(lib.kvs_sync)

    def checkpoint(self) -> None:
        """Writes the index image now (a faster next open)."""
        self._call(lib.kvs_checkpoint)

    def compact(self) -> dict:
        """Gives the space of dead values back now; what it did."""
        r = ffi.new("kvs_compact_report *")
        self._call(lib.kvs_compact, r)
        return _fields(r, "kvs_compact_report")

    def stats(self) -> dict:
        """Figures about the store (records, bytes, ring, index, reclaiming, flushes,
        checkpoints, open; every field of kvs_stats)."""
        s = ffi.new("kvs_stats *")
        self._call(lib.kvs_get_stats_sized, s, ffi.sizeof("kvs_stats"))
        return _fields(s, "kvs_stats")

    def verify(self) -> dict:
        """Reads every live record and checks it; the counts, with "clean" True when
        nothing was wrong."""
        r = ffi.new("kvs_verify_report *")
        db = self._enter()
        try:
            rc = lib.kvs_verify(db, r)
        finally:
            self._leave()
        if rc not in (lib.KVS_OK, lib.KVS_ERR_CORRUPTION):
            raise _error(rc)
        out = _fields(r, "kvs_verify_report")
        out["clean"] = rc == lib.KVS_OK
        return out

    def keys(self, prefix=b""):
        """An iterator over the keys (bytes) that start with `prefix`, from the key
        summaries, without reading values. Each key not written meanwhile comes once.
        Opening it waits for a compaction under way. A listing the store's close cuts
        short raises ValueError at its next step (it is not taken for its end)."""
        return _Keys(self, prefix)

    def close(self) -> None:
        """Flushes and closes the store (waiting for calls in flight); idempotent. A close
        that finds another one under way returns when that one is done."""
        with self._cond:
            if self._closing:
                while not self._closed:
                    self._cond.wait()
                return
            self._closing = True
            if self._db == ffi.NULL:  # the open failed: nothing to close
                self._closed = True
                return
            if os.getpid() != self._pid:
                # A child of a fork: the handle is the parent's; drop it unclosed.
                self._db = ffi.NULL
                self._closed = True
                self._cond.notify_all()
                return
            db, self._db = self._db, ffi.NULL
            while self._users > 0:
                self._cond.wait()
        try:
            for it in list(self._iters):
                it._close(cut=True)
            _check(lib.kvs_close(db))
        finally:
            with self._cond:
                self._closed = True
                self._cond.notify_all()

    @property
    def closed(self) -> bool:
        return self._db == ffi.NULL

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __getitem__(self, key) -> bytes:
        v = self.get(key)
        if v is None:
            raise KeyError(key)
        return v

    def __setitem__(self, key, value) -> None:
        self.put(key, value)

    def __delitem__(self, key) -> None:
        if not self.delete(key):
            raise KeyError(key)

    def __contains__(self, key) -> bool:
        return self.value_len(key) is not None

    def __len__(self) -> int:
        return self.stats()["records"]

    def __iter__(self):
        return self.keys()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        return f"<kvs.Store {self.path!r} ({state})>"



def _fields(cdata, type_name: str) -> dict:
    return {name: getattr(cdata, name) for name, _ in ffi.typeof(type_name).fields}


class _Keys(_Unshareable):
    """A key listing (kvs_iter_*); closed when exhausted, when the store closes, or when
    collected."""

    def __init__(self, store: Store, prefix):
        self._it = ffi.NULL
        self._failed = None
        # Held across every call on the listing: kvs_iter_next releases the GIL, and a
        # listing takes one call at a time (a close must not free it under a next).
        self._lock = threading.Lock()
        # The store's close ended it before its end.
        self._cut = False
        self._pid = os.getpid()
        p, pn = _data(prefix, "key") if prefix else (ffi.NULL, 0)
        self._store = store
        out = ffi.new("kvs_iter_t **")
        db = store._enter()
        try:
            _check(lib.kvs_iter_open(db, p, pn, out))
            self._it = out[0]
            store._iters.add(self)
        finally:
            store._leave()

    def __iter__(self):
        return self

    def __next__(self) -> bytes:
        with self._lock:
            if self._failed is not None:
                raise self._failed.with_traceback(None)
            if self._it == ffi.NULL:
                if self._cut:
                    raise ValueError("the kvs store was closed during this listing")
                raise StopIteration
            buf, n = _take()
            self._store._enter()
            failed = None
            try:
                while True:
                    rc = lib.kvs_iter_next(self._it, buf, len(buf), n, n + 1)
                    if rc == lib.KVS_OK:
                        return ffi.unpack(buf, n[0])
                    if rc == lib.KVS_NOT_FOUND:
                        break
                    if rc != lib.KVS_ERR_BUFFER_TOO_SMALL:
                        failed = _error(rc)
                        break
                    buf = ffi.new("char[]", n[0])
            finally:
                _give(buf, n)
                self._store._leave()
            # Ended either way: closed now, so that the reclaimer goes on (found by review:
            # after an error it waited for the garbage collector). An error comes again at
            # every later call, not StopIteration, which would pass for a complete listing.
            self._close_locked()
            if failed is not None:
                self._failed = failed
                raise failed
        raise StopIteration

    def _close(self, cut: bool = False):
        with self._lock:
            self._cut = self._cut or (cut and self._it != ffi.NULL)
            self._close_locked()

    def _close_locked(self):
        it, self._it = self._it, ffi.NULL
        if it != ffi.NULL and os.getpid() == self._pid:
            lib.kvs_iter_close(it)


    def close(self) -> None:
        """Ends the listing early."""
        self._close()

    def __del__(self):
        self._close()
