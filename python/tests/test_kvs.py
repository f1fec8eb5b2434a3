"""The Python package against the real library: the whole API, bad inputs, a 5 MiB value,
threads, persistence across reopens (a model test against a dict), and a store locked by
a second process."""

import errno
import os
import random
import subprocess
import sys
import threading
import time

import pytest

import kvs

SMALL = dict(buffer_size=8 << 20, flush_interval_ms=2)


@pytest.fixture
def store(tmp_path):
    s = kvs.open(tmp_path / "s", **SMALL)
    yield s
    s.close()


def value(key: bytes, version: int, n: int) -> bytes:
    r = random.Random(hash((key, version, n)))
    return r.randbytes(n)


def test_version_matches_the_package():
    v = kvs.version()
    assert v.count(".") == 2 and all(p.isdigit() for p in v.split("."))
    assert kvs._kvs.lib.kvs_version() == kvs._kvs.lib.KVS_VERSION


def test_put_get_delete_and_every_bytes_like(store):
    store.put(b"a", b"1")
    store.put(bytearray(b"b"), bytearray(b"22"))
    store.put(memoryview(b"xcx")[1:2], memoryview(b"333"))
    store.put("ключ", b"utf-8 key")
    assert store.get(b"a") == b"1"
    assert store.get(b"b") == b"22"
    assert store.get(b"c") == b"333"
    assert store.get("ключ".encode()) == b"utf-8 key"
    assert store.get("ключ") == b"utf-8 key"
    assert isinstance(store.get(b"a"), bytes)
    assert store.get(b"absent") is None
    assert store.get(b"absent", b"dflt") == b"dflt"
    assert store.value_len(b"c") == 3 and store.value_len(b"absent") is None
    store.put(b"empty", b"")
    assert store.get(b"empty") == b""
    assert store.delete(b"a") is True
    assert store.delete(b"a") is False
    assert store.get(b"a") is None


def test_mapping_protocol(store):
    store[b"k"] = b"v"
    assert store[b"k"] == b"v"
    assert b"k" in store and "k" in store and b"nope" not in store
    assert len(store) == 1
    with pytest.raises(KeyError):
        store[b"nope"]
    del store[b"k"]
    with pytest.raises(KeyError):
        del store[b"k"]
    assert len(store) == 0


def test_keys_by_prefix_and_iteration(store):
    want = {f"user/{i:03}".encode() for i in range(50)} | {b"other"}
    for k in want:
        store[k] = k * 3
    assert set(store) == want
    assert set(store.keys(prefix=b"user/")) == want - {b"other"}
    assert set(store.keys(prefix="user/04")) == {f"user/04{i}".encode() for i in range(10)}
    assert list(store.keys(prefix=b"zzz")) == []
    # A long key comes back whole (the buffer grows).
    long_key = b"L" * 4096
    store[long_key] = b"x"
    assert long_key in set(store.keys(prefix=b"L"))


def test_a_5_mib_value_and_one_byte_more(store):
    big = os.urandom(5 << 20)
    store[b"big"] = big
    assert store[b"big"] == big
    store.sync()
    with pytest.raises(kvs.TooLargeError) as e:
        store[b"big"] = big + b"x"
    assert e.value.code == kvs._kvs.lib.KVS_ERR_TOO_LARGE
    assert "5242881" in e.value.message
    assert store[b"big"] == big, "a refused put changed nothing"


def test_bad_inputs_change_nothing(store, tmp_path):
    store[b"k"] = b"v"
    with pytest.raises(kvs.InvalidArgumentError):
        store.put(b"", b"v")
    with pytest.raises(kvs.InvalidArgumentError) as e:
        store.put(b"x" * 4097, b"v")
    assert "key" in str(e.value)
    with pytest.raises(TypeError):
        store.put(123, b"v")
    with pytest.raises(TypeError):
        store.put(b"k", "a str value")
    with pytest.raises(TypeError):
        store.get(None)
    assert store.stats()["records"] == 1 and store[b"k"] == b"v"
    # Options.
    with pytest.raises(TypeError):
        kvs.open(tmp_path / "o1", no_such_option=1)
    with pytest.raises(ValueError):
        kvs.open(tmp_path / "o2", durability="sometimes")
    with pytest.raises(TypeError):
        kvs.open(tmp_path / "o3", direct_io="yes")
    with pytest.raises(ValueError):
        kvs.open(tmp_path / "o4", buffer_size=-1)
    with pytest.raises(kvs.InvalidArgumentError) as e:
        kvs.open(tmp_path / "o5", buffer_size=12345)
    assert "buffer_size" in e.value.message
    assert not (tmp_path / "o5").exists(), "a refused open created nothing"


def test_errors_carry_the_file_and_errno(tmp_path):
    (tmp_path / "plain").write_bytes(b"not a directory")
    with pytest.raises(kvs.IoError) as e:
        kvs.open(tmp_path / "plain" / "below")
    assert e.value.errno == errno.ENOTDIR
    assert "plain" in e.value.message
    assert isinstance(e.value, kvs.Error)


def test_reopen_keeps_everything_a_model_test(tmp_path):
    path = tmp_path / "model"
    model = {}
    rnd = random.Random(7)
    for rnd_i in range(6):
        with kvs.open(path, **SMALL) as s:
            for k, v in model.items():
                assert s.get(k) == v, f"round {rnd_i}: {k!r}"
            assert set(s.keys()) == set(model)
            for op in range(150):
                k = f"key-{rnd.randrange(60)}".encode()
                if rnd.random() < 0.1:
                    batch = []
                    for _ in range(rnd.randrange(1, 5)):
                        bk = f"key-{rnd.randrange(60)}".encode()
                        bv = None if rnd.random() < 0.3 else value(bk, op, rnd.choice([0, 10, 5000]))
                        batch.append((bk, bv))
                    s.write(batch)
                    for bk, bv in batch:
                        if bv is None:
                            model.pop(bk, None)
                        else:
                            model[bk] = bv
                elif rnd.random() < 0.25:
                    assert s.delete(k) == (k in model)
                    model.pop(k, None)
                else:
                    v = value(k, op + rnd_i * 1000, rnd.choice([0, 10, 5000, 150_000]))
                    s[k] = v
                    model[k] = v
            if rnd_i == 3:
                s.compact()
                s.checkpoint()
            assert len(s) == len(model)
    with kvs.open(path, **SMALL) as s:
        assert {k: s[k] for k in s} == model
        assert s.verify()["clean"]


def test_a_batch_is_applied_whole_or_not_at_all(tmp_path):
    path = tmp_path / "batch"
    with kvs.open(path, **SMALL) as s:
        s[b"gone"] = b"old"
        s[b"kept"] = b"old"
        s.write([(b"a", b"1"), (bytearray(b"b"), memoryview(b"22")), ("c", b""), (b"gone", None)])
        assert (s[b"a"], s[b"b"], s[b"c"]) == (b"1", b"22", b"")
        assert b"gone" not in s
        # A mapping; a later operation on a key wins over an earlier one.
        s.write({b"a": None, b"d": b"4"})
        s.write([(b"e", b"first"), (b"e", None), (b"e", b"last")])
        assert b"a" not in s and s[b"d"] == b"4" and s[b"e"] == b"last"
        s.write([])
        before = {k: s[k] for k in s}
        # Bad input: an error, and nothing of the batch is applied.
        with pytest.raises(kvs.InvalidArgumentError):
            s.write([(b"kept", b"new"), (b"", b"empty key")])
        with pytest.raises(kvs.TooLargeError):
            s.write([(b"kept", b"new"), (b"big", bytes((5 << 20) + 1))])
        with pytest.raises(TypeError):
            s.write([(b"kept", b"new"), b"not a pair"])
        with pytest.raises(TypeError):
            s.write([(b"kept", 42)])
        assert {k: s[k] for k in s} == before
    with kvs.open(path, **SMALL) as s:
        assert {k: s[k] for k in s} == before
        s.close()
        with pytest.raises(ValueError):
            s.write([(b"x", b"y")])


def test_threads_share_a_store(store):
    errors = []

    def worker(t):
        try:
            for i in range(200):
                k = f"t{t}/{i % 25}".encode()
                v = value(k, i, 1000 + i)
                store[k] = v
                got = store[k]
                if got != v:
                    errors.append((k, len(got)))
        except Exception as e:  # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(store) == 8 * 25


def test_close_waits_and_later_calls_fail(tmp_path):
    s = kvs.open(tmp_path / "c", **SMALL)
    s[b"a"] = b"1"
    it = s.keys()
    s.close()
    s.close()  # idempotent
    assert s.closed
    with pytest.raises(ValueError):
        s.get(b"a")
    # A listing the close cut short says so: it is not taken for the listing's end.
    with pytest.raises(ValueError, match="closed during this listing"):
        next(it)
    with kvs.open(tmp_path / "c", **SMALL) as s2:
        assert s2[b"a"] == b"1"


def test_a_second_process_finds_the_store_locked(store):
    code = (
        "import sys, kvs\n"
        "try:\n"
        "    kvs.open(sys.argv[1])\n"
        "except kvs.LockedError as e:\n"
        "    print('locked', e.code)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, store.path], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["locked", str(kvs._kvs.lib.KVS_ERR_LOCKED)]


def test_stats_compact_sync_checkpoint(store):
    for i in range(100):
        store[f"k{i}".encode()] = b"x" * 10_000
    for i in range(90):
        del store[f"k{i}".encode()]
    store.sync()
    store.checkpoint()
    st = store.stats()
    assert st["records"] == 10 and st["dead_bytes"] > 0
    # Fields past the first version of kvs_stats come too (kvs_get_stats_sized).
    assert st["checkpoints"] >= 1 and st["syncs"] >= 1 and st["segment_size"] > 0
    assert st["flushes"] == st["flushes_asked"] + st["flushes_horizon"] + st["flushes_interval"]
    rep = store.compact()
    assert set(rep) == {"segments_freed", "bytes_moved", "records_moved"}
    # A compaction keeps no slot with its blocks for later segments (recycled).
    st = store.stats()
    assert st["recycled_segments"] == 0 and st["segments_reused"] >= 0
    assert all(store[f"k{i}".encode()] == b"x" * 10_000 for i in range(90, 100))


def test_a_listing_shared_by_threads_gives_each_key_once(store):
    want = {f"k{i:04}".encode() for i in range(2000)}
    for k in want:
        store[k] = b"v"
    it = store.keys()
    seen = []
    lock = threading.Lock()

    def drain():
        for k in it:
            with lock:
                seen.append(k)

    threads = [threading.Thread(target=drain) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(seen) == sorted(want)


def test_two_closes_at_once_both_return_closed(tmp_path):
    s = kvs.open(tmp_path / "cc", **SMALL)
    for i in range(200):
        s[f"k{i}"] = b"x" * 10_000
    done = []
    ts = [threading.Thread(target=lambda: (s.close(), done.append(s.closed))) for _ in range(3)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert done == [True, True, True]
    # Really closed: the lock is free for a new handle.
    with kvs.open(tmp_path / "cc", **SMALL) as s2:
        assert len(s2) == 200


def test_a_bytearray_changed_by_another_thread_during_its_put_is_never_stored_torn(store):
    # The put releases the GIL; a thread writing into the bytearray meanwhile must not
    # make the store keep a record whose checksum does not match its bytes.
    ba = bytearray(1 << 20)
    stop = threading.Event()

    def scribble():
        i = 0
        while not stop.is_set():
            ba[i % len(ba)] ^= 0xFF
            i += 4099

    t = threading.Thread(target=scribble)
    t.start()
    try:
        for i in range(60):
            store.put(b"torn%d" % i, ba)
    finally:
        stop.set()
        t.join()
    for i in range(60):
        v = store.get(b"torn%d" % i)  # raised CorruptionError for torn records
        assert v is not None and len(v) == 1 << 20


class _Lib:
    """kvs.lib with some functions replaced (the rest forwarded)."""

    def __init__(self, real, **replaced):
        self._real = real
        self.__dict__.update(replaced)

    def __getattr__(self, name):
        return getattr(self._real, name)


def test_a_key_changed_by_another_thread_during_the_call_is_not_seen(store, monkeypatch):
    # Found by review: delete passed a bytearray key's own buffer to C (put copied), so
    # another thread writing into it during the call (the GIL is released) changed the
    # key under the library. Here the write comes inside the call itself.
    real = kvs.lib
    store[b"key-a"] = b"1"
    store[b"key-b"] = b"2"
    ba = bytearray(b"key-a")

    def kvs_delete(db, k, kn):
        ba[4] = ord("b")  # another thread's write, while the call runs
        return real.kvs_delete(db, k, kn)

    monkeypatch.setattr(kvs, "lib", _Lib(real, kvs_delete=kvs_delete))
    assert store.delete(ba) is True
    monkeypatch.setattr(kvs, "lib", real)
    assert b"key-a" not in store
    assert store[b"key-b"] == b"2"
    # Keys of any layout are taken (a strided view is copied).
    store[b"xyz"] = b"3"
    assert store[memoryview(b"xaybzc")[::2]] == b"3"


def test_a_get_nested_in_a_get_keeps_each_its_own_buffer(store, monkeypatch):
    # Found by review: the length and buffer of a get were per-thread slots, so a get
    # run inside another (a signal handler or finaliser between the C call and the copy
    # out) overwrote them: the outer get returned the inner one's bytes, or read past its
    # buffer.
    real = kvs.lib
    big = value(b"big", 1, 1 << 20)
    store[b"big"] = big
    store[b"small"] = b"small value"
    nested = []

    def kvs_get(db, k, kn, buf, cap, n):
        rc = real.kvs_get(db, k, kn, buf, cap, n)
        if not nested:
            nested.append(None)
            nested[0] = store.get(b"big")
        return rc

    monkeypatch.setattr(kvs, "lib", _Lib(real, kvs_get=kvs_get))
    assert store.get(b"small") == b"small value"
    monkeypatch.setattr(kvs, "lib", real)
    assert nested == [big]


def test_a_store_and_a_listing_cannot_be_copied(store):
    import copy
    import pickle

    # Found by review: a shallow copy shared the handle, and both closed it.
    for obj in (store, store.keys()):
        with pytest.raises(TypeError):
            copy.copy(obj)
        with pytest.raises(TypeError):
            copy.deepcopy(obj)
        with pytest.raises(TypeError):
            pickle.dumps(obj)
    store[b"still"] = b"open"
    assert store[b"still"] == b"open"


def test_a_null_byte_in_the_path_is_refused(tmp_path):
    # Found by review: cffi passed the path up to the NUL, opening another directory.
    with pytest.raises(ValueError):
        kvs.open(str(tmp_path / "a") + "\0b")
    assert not (tmp_path / "a").exists()


def test_a_forked_child_neither_uses_nor_closes_the_parents_store(store):
    # Found by review: the child has none of the library's threads; its exit closed the
    # store, which waited for ever for a thread that is not there.
    store[b"k"] = b"v"
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            try:
                store.get(b"k")
            except ValueError:
                store.close()
                code = 0
        finally:
            os._exit(code)
    deadline = time.monotonic() + 30
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            pytest.fail("the child hung")
        time.sleep(0.05)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store[b"k"] == b"v"


def test_a_listing_that_fails_is_closed_and_fails_again(store, monkeypatch):
    """Found by review: after an error, the next call ended the listing with StopIteration
    (a cut listing passed for a whole one), and the listing stayed open, so the reclaimer
    waited for the garbage collector. It is now closed at once, and the error comes again.
    (The library's own errors here are hard to provoke: its kvs_iter_next is made to fail.)"""
    for i in range(10):
        store[f"k{i}".encode()] = b"v"
    it = store.keys()
    next(it)
    real = kvs.lib
    closed = []

    class Failing:
        def __getattr__(self, name):
            return getattr(real, name)

        def kvs_iter_next(self, *args):
            return real.KVS_ERR_CORRUPTION

        def kvs_iter_close(self, it):
            closed.append(it)
            return real.kvs_iter_close(it)

    monkeypatch.setattr(kvs, "lib", Failing())
    with pytest.raises(kvs.CorruptionError):
        next(it)
    assert len(closed) == 1, "closed when it failed"
    with pytest.raises(kvs.CorruptionError):
        next(it)
    assert len(closed) == 1


def test_zero_means_in_python_what_it_means_in_rust(tmp_path):
    """Found by review: 0 went to C, where it means "the default": reclaim_rate=0 gave
    256 MiB/s, not Rust's "no limit", and checkpoint_bytes=0 gave 256 MiB, not "off".
    Those now mean what they do in Rust; 0 for an option where it means nothing is a
    ValueError, as is an infinite value (OverflowError before)."""
    for name in ("buffer_size", "max_value_size", "segment_size", "flush_interval_ms",
                 "expected_records", "file_mode", "reclaim_threshold"):
        with pytest.raises(ValueError, match=name):
            kvs.open(tmp_path / "z", **{name: 0})
    with pytest.raises(ValueError, match="finite"):
        kvs.open(tmp_path / "z", buffer_size=float("inf"))
    assert not (tmp_path / "z").exists()
    s = kvs.open(tmp_path / "z", reclaim_rate=0, checkpoint_bytes=0,
                 checkpoint_interval_ms=0, **SMALL)
    s[b"k"] = b"v"
    s.close()
    s = kvs.open(tmp_path / "z", **SMALL)
    assert s[b"k"] == b"v"
    s.close()
