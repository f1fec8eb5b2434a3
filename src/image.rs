//! IMAGE_file (the seed's sync module, index half): the index as it was when the store
//! was last closed, so that open need not scan disk_file.
//!
//! An 80-byte header then the body: the slot table, the node pool, the free-id stack, all
//! little-endian u32s. Written by atomic replace (temp file, fsync, rename, fsync dir).

use std::fs::{self, File, OpenOptions};
use std::hash::Hasher as _;
use std::io::{BufWriter, Read, Write};
use std::mem::MaybeUninit;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::{Receiver, SyncSender};

use xxhash_rust::xxh3::{xxh3_64, Xxh3};

use crate::error::{Error, Result};
use crate::format::{u32_at, u64_at, LongHasher};
use crate::index::{Index, Node, Squeeze, MAX_NODES, NODE_BYTES};
use crate::log::device::Blocks;
use crate::log::fault::{Faults, Op};

/// The image's first 8 bytes.
pub const IMAGE_MAGIC: [u8; 8] = *b"KVSIMG\0\0";
/// The IMAGE_file format version.
pub const IMAGE_VERSION: u32 = 1;
/// Bytes of the header.
pub const IMAGE_HEADER_LEN: usize = 80;

/// What an image says besides the index.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ImageMeta {
    /// disk_file offset up to which every record is reflected in the index.
    pub covered: u64,
    /// Sequence number for the next record.
    pub next_seq: u64,
    /// Must equal the disk_file superblock's seed, or the image belongs to another store.
    pub hash_seed: u64,
}

/// An image's id: the checksum of its header, which IMAGE_delta blocks name.
pub type ImageId = u64;

/// Bytes of the IMAGE_file `write` makes of `index` (its free nodes left out).
pub fn size(index: &Index) -> u64 {
    IMAGE_HEADER_LEN as u64 + index.slot_count() as u64 * 4 + index.len() * NODE_BYTES as u64
}

/// Writes `index` to `path` atomically, without its free nodes (ids renumbered: `Squeeze`).
/// Returns the bytes written and the image's id. `faults`: tests inject failures into the
/// write, the fsync and the rename here.
pub fn write(
    path: &Path,
    index: &Index,
    meta: &ImageMeta,
    file_mode: u32,
    faults: Option<&Faults>,
) -> Result<(u64, ImageId)> {
    write_nodes(path, index, meta, file_mode, faults, true)
}

/// `write`; with `squeeze` false, free nodes and the free-id stack are written too (tests:
/// images of older versions hold them).
fn write_nodes(
    path: &Path,
    index: &Index,
    meta: &ImageMeta,
    file_mode: u32,
    faults: Option<&Faults>,
    squeeze: bool,
) -> Result<(u64, ImageId)> {
    let tmp = path.with_extension("tmp");
    // Until the rename, the old image stands untouched: a failure (a full disk, say)
    // leaves it as it was, and the temporary copy is removed so that it holds no space.
    let done = write_tmp(&tmp, index, meta, file_mode, faults, squeeze).and_then(|r| {
        Faults::inject(faults, Op::ImageRename)?;
        fs::rename(&tmp, path)?;
        Ok(r)
    });
    if done.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    let (len, id) = done?;
    // The new image has replaced the old one; whether the rename is durable is unknown if
    // this fails, which is no longer "nothing changed" (never `NoSpace`).
    File::open(path.parent().unwrap_or(Path::new(".")))
        .and_then(|d| d.sync_all())
        .map_err(Error::Io)?;
    Ok((len, id))
}

/// Writes the image to `tmp` and makes it durable. Returns its bytes and id.
fn write_tmp(
    tmp: &Path,
    index: &Index,
    meta: &ImageMeta,
    file_mode: u32,
    faults: Option<&Faults>,
    squeeze: bool,
) -> Result<(u64, ImageId)> {
    Faults::inject(faults, Op::ImageWrite)?;
    let file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(file_mode)
        .open(tmp)?;
    let (slots, nodes, mut free) = index.parts();
    // Free nodes are left out (ids renumbered), unless a test asks for them.
    let squeeze = (squeeze && !free.is_empty()).then(|| Squeeze::new(index));
    let id = |x: u32| squeeze.as_ref().map_or(x, |s| s.id(x));
    if squeeze.is_some() {
        free = &[];
    }
    let mut written = 0u64;
    let mut sum = Xxh3::new();
    let mut w = BufWriter::with_capacity(1 << 20, &file);
    w.write_all(&[0u8; IMAGE_HEADER_LEN])?;
    let mut put = |w: &mut BufWriter<&File>, b: &[u8]| -> Result<()> {
        sum.update(b);
        w.write_all(b)?;
        Ok(())
    };
    for &s in slots {
        put(&mut w, &id(s).to_le_bytes())?;
    }
    for (at, n) in nodes.iter().enumerate() {
        if squeeze.as_ref().is_some_and(|s| !s.keeps(at)) {
            continue;
        }
        let mut b = [0u8; NODE_BYTES];
        let (left, right) = (id(n.left), id(n.right));
        for (i, v) in [n.fp_hi, n.fp_lo, n.off_lo, n.off_hi, n.len, left, right]
            .iter()
            .enumerate()
        {
            b[i * 4..i * 4 + 4].copy_from_slice(&v.to_le_bytes());
        }
        put(&mut w, &b)?;
        written += 1;
    }
    for f in free {
        put(&mut w, &f.to_le_bytes())?;
    }
    w.flush()?;
    drop(w);
    let mut h = [0u8; IMAGE_HEADER_LEN];
    h[0..8].copy_from_slice(&IMAGE_MAGIC);
    h[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
    h[12..16].copy_from_slice(&(NODE_BYTES as u32).to_le_bytes());
    h[16..24].copy_from_slice(&meta.covered.to_le_bytes());
    h[24..32].copy_from_slice(&meta.next_seq.to_le_bytes());
    h[32..40].copy_from_slice(&(slots.len() as u64).to_le_bytes());
    h[40..48].copy_from_slice(&written.to_le_bytes());
    h[48..56].copy_from_slice(&(free.len() as u64).to_le_bytes());
    h[56..64].copy_from_slice(&sum.digest().to_le_bytes());
    h[64..72].copy_from_slice(&meta.hash_seed.to_le_bytes());
    let hsum = xxh3_64(&h[0..72]);
    h[72..80].copy_from_slice(&hsum.to_le_bytes());
    file.write_all_at(&h, 0)?;
    Faults::inject(faults, Op::ImageSync)?;
    file.sync_all()?;
    let len = file.metadata()?.len();
    Ok((len, hsum))
}

/// fsyncs a directory so that a rename or create in it is durable.
pub fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)?.sync_all()?;
    Ok(())
}

/// An image read back: the index, what the header says, the image's id and its bytes.
pub type Loaded = (Index, ImageMeta, ImageId, u64);

/// Reads and checks the image at `path`. `Ok(None)` if there is none; a damaged image is
/// `Err(Corruption)` (the caller then rebuilds from disk_file). The file is read in
/// chunks (by O_DIRECT, `DirectRead`, unless the page cache holds most of it) straight
/// into the index's tables (no copy of the whole file in memory); a
/// second thread computes each chunk's checksum and decodes its second half while the
/// first decodes the first half. `direct`: the store reads disk_file with O_DIRECT
/// (`Options::direct_reads`); without it, IMAGE_file goes through the page cache too.
pub fn read(path: &Path, direct: bool) -> Result<Option<Loaded>> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.into()),
    };
    let opened = file.metadata()?;
    let len = opened.len();
    let same = |d: &File| {
        use std::os::unix::fs::MetadataExt;
        d.metadata()
            .is_ok_and(|m| (m.dev(), m.ino()) == (opened.dev(), opened.ino()))
    };
    // Through the page cache when it holds most of the file already (a process restarted
    // on a running machine): copying out of it beats the device.
    let direct = (direct && cached_share(&file, len) < 0.5)
        .then(|| {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(path)
                .ok()
        })
        .flatten()
        .filter(same);
    let plain = file.try_clone().ok();
    let (index, meta, id) = match direct.and_then(|d| DirectRead::start(d, plain, 0, len)) {
        Some(d) => decode_from(d, len)?,
        None => decode_from(file, len)?,
    };
    Ok(Some((index, meta, id, len)))
}

/// A file read front to back with O_DIRECT by a thread of its own (`kvs-image-read`),
/// `DIRECT_CHUNK` bytes at a time into one of two aligned buffers, the next one read
/// while the bytes of the last are handed out through `Read`. A clean open of 10 M records
/// read its 299 MiB IMAGE_file, just written, in 508-660 ms cold through the page cache
/// (whose first read of new data ran at 600-800 MB/s on the development machine), and in
/// 199-245 ms this way (DESIGN.md, "IMAGE_file"). A read that fails with O_DIRECT
/// (EINVAL: an offset or buffer it cannot take; or a file system that opens such files
/// but cannot read them so) is made again through the plain descriptor, and so is the
/// rest of the file; EINTR is retried.
struct DirectRead {
    filled: Receiver<std::io::Result<(Blocks, usize)>>,
    empty: SyncSender<Blocks>,
    /// The buffer being handed out, its bytes, and how many were.
    cur: Option<(Blocks, usize)>,
    pos: usize,
    /// The error the reader ended on, returned by every later `read`.
    failed: Option<(std::io::ErrorKind, String)>,
}

/// Pages of a file `cached_share` looks at, spread evenly over it.
const CACHE_PROBES: usize = 64;

/// The share of `CACHE_PROBES` pages spread over `file`'s `len` bytes that the page cache
/// holds (`mincore` over a mapping of the file that nothing reads through); 0 if it
/// cannot tell. (For a file the process neither owns nor may write, the kernel reports
/// every page resident: such a file is read through the page cache, as before O_DIRECT
/// reads.)
fn cached_share(file: &File, len: u64) -> f64 {
    use std::os::fd::AsRawFd;
    let Ok(len) = usize::try_from(len) else {
        return 0.0;
    };
    if len == 0 {
        return 1.0;
    }
    // SAFETY: sysconf only reads a system setting.
    let page = usize::try_from(unsafe { libc::sysconf(libc::_SC_PAGESIZE) })
        .unwrap_or(4096)
        .max(1);
    // SAFETY: maps `len` bytes of an open file read-only; nothing reads through the
    // mapping (mincore only looks at which of its pages are resident), and it is unmapped
    // below, once.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return 0.0;
    }
    let pages = len.div_ceil(page);
    let mut held = 0;
    for i in 0..CACHE_PROBES {
        let at = (pages * i / CACHE_PROBES) * page;
        let mut resident = 0u8;
        // SAFETY: `[p + at, p + at + 1)` lies in the mapping (`at` is below `len`), and
        // `resident` has room for the one page it covers.
        let r = unsafe { libc::mincore(p.cast::<u8>().add(at).cast(), 1, &mut resident) };
        if r == 0 && resident & 1 != 0 {
            held += 1;
        }
    }
    // SAFETY: `p` and `len` are the mapping made above.
    unsafe { libc::munmap(p, len) };
    held as f64 / CACHE_PROBES as f64
}

/// Bytes an O_DIRECT read of IMAGE_file takes at a time.
const DIRECT_CHUNK: usize = 8 << 20;

impl DirectRead {
    /// Starts reading `direct` (opened with O_DIRECT; `plain`, the same file without it)
    /// from `from` to `len`. `None` if the buffers or the thread cannot be had: the caller
    /// reads through the page cache instead.
    fn start(direct: File, plain: Option<File>, from: u64, len: u64) -> Option<DirectRead> {
        let (empty, free) = std::sync::mpsc::sync_channel(2);
        let (done, filled) = std::sync::mpsc::sync_channel(2);
        for _ in 0..2 {
            empty.send(Blocks::zeroed(DIRECT_CHUNK).ok()?).ok()?;
        }
        std::thread::Builder::new()
            .name("kvs-image-read".into())
            .spawn(move || {
                let mut at = from;
                let mut refused = false;
                // Ends when the file is read, or when the reader is dropped.
                while at < len {
                    let Ok(mut buf) = free.recv() else { return };
                    let read = fill(&direct, plain.as_ref(), &mut refused, &mut buf, at, len);
                    let end = !matches!(read, Ok(n) if n > 0);
                    if let Ok(n) = read {
                        at += n as u64;
                    }
                    if done.send(read.map(|n| (buf, n))).is_err() || end {
                        return;
                    }
                }
            })
            .ok()?;
        Some(DirectRead {
            filled,
            empty,
            cur: None,
            pos: 0,
            failed: None,
        })
    }
}

/// Fills `buf` from `at` up to `len` (a whole buffer but at the file's end, so the next
/// read stays aligned), with O_DIRECT or, once `refused`, through `plain`; returns the
/// bytes read.
fn fill(
    direct: &File,
    plain: Option<&File>,
    refused: &mut bool,
    buf: &mut Blocks,
    at: u64,
    len: u64,
) -> std::io::Result<usize> {
    let buf = buf.as_mut_slice();
    let mut n = 0;
    while n < buf.len() && at + (n as u64) < len {
        let (to, off) = (&mut buf[n..], at + n as u64);
        let read = match plain.filter(|_| *refused) {
            Some(p) => p.read_at(to, off),
            None => direct.read_at(to, off),
        };
        let got = match read {
            Ok(got) => got,
            // A signal: as `read_exact` on a plain file does, again.
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            // Refused by O_DIRECT (EINVAL for an offset or buffer it cannot take; some
            // file systems fail such reads otherwise): this and the rest through the page
            // cache, as an open before O_DIRECT reads did (found by review).
            Err(_) if !*refused && plain.is_some() => {
                *refused = true;
                continue;
            }
            Err(e) => return Err(e),
        };
        if got == 0 {
            break;
        }
        n += got;
    }
    Ok(n)
}

impl Read for DirectRead {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        if self.cur.as_ref().is_none_or(|&(_, n)| self.pos == n) {
            if let Some((b, _)) = self.cur.take() {
                // The reader may have ended (the file read): then the buffer is not needed.
                let _ = self.empty.send(b);
            }
            if let Some((kind, what)) = &self.failed {
                // The reader ended on it: the same error again, not the file's end.
                return Err(std::io::Error::new(*kind, what.clone()));
            }
            match self.filled.recv() {
                Ok(Ok(next)) => self.cur = Some(next),
                Ok(Err(e)) => {
                    self.failed = Some((e.kind(), e.to_string()));
                    return Err(e);
                }
                // The reader ended after the last bytes.
                Err(_) => return Ok(0),
            }
            self.pos = 0;
        }
        let Some((b, n)) = &self.cur else {
            return Ok(0);
        };
        let k = out.len().min(n - self.pos);
        out[..k].copy_from_slice(&b.as_slice()[self.pos..self.pos + k]);
        self.pos += k;
        Ok(k)
    }
}

/// Decodes an image from bytes (tests). Never panics, whatever the bytes.
#[cfg(test)]
pub fn decode(b: &[u8]) -> Result<(Index, ImageMeta)> {
    decode_from(b, b.len() as u64).map(|(index, meta, _)| (index, meta))
}

fn bad<T>(m: &str) -> Result<T> {
    Err(Error::corrupt(None, format!("IMAGE_file: {m}")))
}

/// Decodes the image of `len` bytes that `r` reads. Never panics, whatever the bytes.
fn decode_from(mut r: impl Read, len: u64) -> Result<(Index, ImageMeta, ImageId)> {
    let mut h = [0u8; IMAGE_HEADER_LEN];
    if len < IMAGE_HEADER_LEN as u64 || r.read_exact(&mut h).is_err() || h[0..8] != IMAGE_MAGIC {
        return bad("not an image (bad magic or too short)");
    }
    if xxh3_64(&h[0..72]) != u64_at(&h, 72) {
        return bad("header checksum mismatch");
    }
    if u32_at(&h, 8) != IMAGE_VERSION {
        return bad("unsupported version");
    }
    if u32_at(&h, 12) as usize != NODE_BYTES {
        return bad("unexpected node size");
    }
    let (slots_n, nodes_n, free_n) = (u64_at(&h, 32), u64_at(&h, 40), u64_at(&h, 48));
    let body_len = slots_n
        .checked_mul(4)
        .and_then(|s| {
            nodes_n
                .checked_mul(NODE_BYTES as u64)
                .and_then(|n| n.checked_add(s))
        })
        .and_then(|sn| free_n.checked_mul(4).and_then(|f| f.checked_add(sn)));
    if body_len != Some(len - IMAGE_HEADER_LEN as u64) {
        return bad("length does not match the counts in the header");
    }
    // Node ids are u32s below NIL; checked before the tables are allocated, so a header
    // over a large sparse file cannot make the open ask for terabytes.
    if nodes_n > MAX_NODES as u64 || free_n > nodes_n || slots_n > 1 << 32 {
        return bad("counts beyond what an index can hold");
    }
    let mut sum = LongHasher::with_seed(0);
    let mut buf = Vec::new();
    let slots = read_section(&mut r, &mut sum, &mut buf, slots_n, 4, |c| u32_at(c, 0))?;
    let nodes = read_section(&mut r, &mut sum, &mut buf, nodes_n, NODE_BYTES, |c| Node {
        fp_hi: u32_at(c, 0),
        fp_lo: u32_at(c, 4),
        off_lo: u32_at(c, 8),
        off_hi: u32_at(c, 12),
        len: u32_at(c, 16),
        left: u32_at(c, 20),
        right: u32_at(c, 24),
    })?;
    let free = read_section(&mut r, &mut sum, &mut buf, free_n, 4, |c| u32_at(c, 0))?;
    if sum.finish() != u64_at(&h, 56) {
        return bad("body checksum mismatch");
    }
    let index = Index::from_parts(slots, nodes, free)?;
    let meta = ImageMeta {
        covered: u64_at(&h, 16),
        next_seq: u64_at(&h, 24),
        hash_seed: u64_at(&h, 64),
    };
    Ok((index, meta, u64_at(&h, 72)))
}

/// Bytes read, hashed and decoded at a time.
const CHUNK: usize = 8 << 20;
/// Chunks at least this long are hashed, and half decoded, on a second thread.
const HASH_APART: usize = 1 << 20;

/// Reads `n` items of `size` bytes from `r`, adding their bytes to `sum` and decoding each
/// with `f`, a chunk at a time through `buf`. A large chunk is shared by two threads: a
/// second one hashes it and decodes its second half, this one decodes the first half,
/// each straight into the items' places in the vector returned.
fn read_section<T: Send>(
    r: &mut impl Read,
    sum: &mut LongHasher,
    buf: &mut Vec<u8>,
    n: u64,
    size: usize,
    f: impl Fn(&[u8]) -> T + Sync,
) -> Result<Vec<T>> {
    // `n` is bounded by the file's length (checked against the header's counts).
    let mut out: Vec<T> = Vec::new();
    out.try_reserve_exact(n as usize).map_err(|e| {
        let what = format!("IMAGE_file: no memory for a table of {n} entries: {e}");
        Error::Io(std::io::Error::new(std::io::ErrorKind::OutOfMemory, what))
    })?;
    let per = CHUNK / size * size;
    buf.resize(per, 0);
    let mut left = n as usize * size;
    while left > 0 {
        let k = left.min(per);
        let chunk = &mut buf[..k];
        if let Err(e) = r.read_exact(chunk) {
            return bad(&format!("shorter than its header says ({e})"));
        }
        let chunk = &*chunk;
        let items = k / size;
        // The second thread's share: none for a small chunk.
        let mine = if k >= HASH_APART { items / 2 } else { items };
        let (first, second) = chunk.split_at(mine * size);
        // `out` was made with room for all `n` items.
        let (to_first, to_second) = out.spare_capacity_mut()[..items].split_at_mut(mine);
        let decode = |from: &[u8], to: &mut [MaybeUninit<T>]| {
            for (place, c) in to.iter_mut().zip(from.chunks_exact(size)) {
                place.write(f(c));
            }
        };
        let hasher = std::sync::Mutex::new((&mut *sum, to_second));
        let apart = || {
            let mut g = match hasher.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            let (h, to) = &mut *g;
            h.write(chunk);
            decode(second, to);
        };
        std::thread::scope(|s| {
            // Done apart when the chunk is large and a thread can be had, else here.
            let other = (k >= HASH_APART)
                .then(|| {
                    std::thread::Builder::new()
                        .name("kvs-image-read".into())
                        .spawn_scoped(s, apart)
                        .ok()
                })
                .flatten();
            decode(first, to_first);
            match other {
                Some(h) => h
                    .join()
                    .map_err(|_| Error::Io(std::io::Error::other("reading IMAGE_file panicked"))),
                None => {
                    apart();
                    Ok(())
                }
            }
        })?;
        // SAFETY: the `items` places after `out.len()` are initialised: `first` and
        // `second` hold `mine` and `items - mine` whole items (`k` is a multiple of
        // `size`), which `decode` wrote into `to_first` (`mine` places) and `to_second`
        // (the rest), both threads done (joined above; a panic returned early).
        unsafe { out.set_len(out.len() + items) };
        left -= k;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::{hash_key, Location};

    /// Reads all of `r` in pieces of `piece` bytes.
    fn read_all(mut r: impl Read, piece: usize) -> Vec<u8> {
        let mut out = Vec::new();
        let mut b = vec![0u8; piece];
        loop {
            let n = r.read(&mut b).unwrap();
            if n == 0 {
                return out;
            }
            out.extend_from_slice(&b[..n]);
        }
    }

    #[test]
    fn direct_reads_give_the_file_whole_and_fall_back_where_refused() {
        let dir = std::env::temp_dir().join(format!("kvs-image-direct-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f");
        // Two whole chunks and an unaligned tail.
        let bytes: Vec<u8> = (0..2 * DIRECT_CHUNK + 12345)
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        fs::write(&path, &bytes).unwrap();
        let len = bytes.len() as u64;
        let direct = || {
            OpenOptions::new()
                .read(true)
                .custom_flags(libc::O_DIRECT)
                .open(&path)
        };
        if direct().is_err() {
            // No O_DIRECT on this file system: `read` uses the page cache.
            eprintln!("skipped: O_DIRECT is refused here");
            let _ = fs::remove_dir_all(&dir);
            return;
        }
        // Just written: in the page cache, wholly or mostly; once dropped from it, not
        // (where the file system drops it: tmpfs keeps its pages).
        let f = File::open(&path).unwrap();
        assert!(cached_share(&f, len) > 0.9);
        f.sync_all().unwrap();
        {
            use std::os::fd::AsRawFd;
            let dont = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
            nix::fcntl::posix_fadvise(f.as_raw_fd(), 0, 0, dont).unwrap();
        }
        let tmpfs = nix::sys::statfs::statfs(&dir)
            .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC);
        if !tmpfs {
            assert!(cached_share(&f, len) < 0.5);
        }
        let d = DirectRead::start(direct().unwrap(), None, 0, len).unwrap();
        assert_eq!(read_all(d, (1 << 20) + 7), bytes);
        // A read O_DIRECT refuses (here at an unaligned offset: EINVAL) is made through
        // the plain descriptor, and so is the rest; without one, it is an error.
        let mut d = DirectRead::start(direct().unwrap(), None, 100, len).unwrap();
        assert!(d.read(&mut [0u8; 10]).is_err());
        // And again, not the file's end (found by review: `Ok(0)`, so `read_exact` said
        // "shorter than its header says" and the open rebuilt the index from the log).
        assert!(d.read(&mut [0u8; 10]).is_err());
        let plain = File::open(&path).ok();
        let d = DirectRead::start(direct().unwrap(), plain, 100, len).unwrap();
        assert_eq!(read_all(d, 3 << 20), bytes[100..]);
        // Dropped half read: its thread ends (nothing to assert but no hang).
        let mut d = DirectRead::start(direct().unwrap(), None, 0, len).unwrap();
        assert_eq!(d.read(&mut [0u8; 4096]).unwrap(), 4096);
        drop(d);
        let _ = fs::remove_dir_all(&dir);
    }

    fn sample() -> (Index, ImageMeta) {
        let mut idx = Index::new(1);
        for i in 0..3000u64 {
            let loc = Location {
                offset: 4096 + i * 64,
                len: 40,
            };
            idx.insert(&hash_key(3, &i.to_le_bytes()), loc).unwrap();
        }
        for i in 0..500u64 {
            idx.remove(&hash_key(3, &i.to_le_bytes()));
        }
        (
            idx,
            ImageMeta {
                covered: 4096 + 3000 * 64,
                next_seq: 3001,
                hash_seed: 3,
            },
        )
    }

    /// The bytes of `sample()` written as an image file (removed again).
    fn sample_bytes(tag: &str) -> Vec<u8> {
        let dir = std::env::temp_dir().join(format!("kvs-image-{tag}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("IMAGE_file");
        let (idx, meta) = sample();
        write_nodes(&path, &idx, &meta, 0o600, None, false).unwrap();
        let bytes = fs::read(&path).unwrap();
        fs::remove_dir_all(&dir).unwrap();
        bytes
    }

    /// An image of several chunks, each shared by two threads (the second half decoded
    /// apart, an odd number of nodes in the last chunk): every node and slot reads back
    /// in its place.
    #[test]
    fn a_large_image_decoded_on_two_threads_reads_back_whole() {
        let dir = std::env::temp_dir().join(format!("kvs-image-large-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("IMAGE_file");
        let n = 2 * (CHUNK / NODE_BYTES) as u64 + 77_777;
        let mut idx = Index::new(n);
        for i in 0..n {
            let loc = Location {
                offset: 4096 + i * 64,
                len: 40 + (i % 1000) as u32,
            };
            idx.insert(&hash_key(5, &i.to_le_bytes()), loc).unwrap();
        }
        let meta = ImageMeta {
            covered: 4096 + n * 64,
            next_seq: n + 1,
            hash_seed: 5,
        };
        write(&path, &idx, &meta, 0o600, None).unwrap();
        // Through the page cache, then (the cache dropped, so that `read` takes O_DIRECT
        // where the file system allows it) by `DirectRead`.
        for direct in [false, true] {
            if direct {
                use std::os::fd::AsRawFd;
                let f = File::open(&path).unwrap();
                let dont = nix::fcntl::PosixFadviseAdvice::POSIX_FADV_DONTNEED;
                nix::fcntl::posix_fadvise(f.as_raw_fd(), 0, 0, dont).unwrap();
            }
            let (back, m, _, _) = read(&path, direct).unwrap().unwrap();
            assert_eq!(m, meta);
            let (s0, n0, _) = idx.parts();
            let (s1, n1, f1) = back.parts();
            assert!(n1.len() * NODE_BYTES > 2 * CHUNK && n1.len() % 2 == 1);
            assert_eq!((s0, f1.len()), (s1, 0));
            assert!(n0 == n1, "the nodes differ");
            assert_eq!(back.live_bytes(), idx.live_bytes());
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// Written squeezed (the default) and with its free nodes (as older versions wrote
    /// it), the image reads back to the same entries; squeezed, it holds only the 2500
    /// nodes in use and no free id, and the index read from it takes new keys.
    #[test]
    fn image_round_trips() {
        let dir = std::env::temp_dir().join(format!("kvs-image-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("IMAGE_file");
        let (idx, meta) = sample();
        for squeeze in [true, false] {
            let (len, _) = write_nodes(&path, &idx, &meta, 0o600, None, squeeze).unwrap();
            let (mut back, m, _, _) = read(&path, squeeze).unwrap().unwrap();
            assert_eq!(m, meta);
            assert_eq!(back.len(), 2500);
            let (slots, nodes, free) = back.parts();
            let want = if squeeze { (2500, 0) } else { (3000, 500) };
            assert_eq!((nodes.len(), free.len()), want);
            let body = slots.len() * 4 + nodes.len() * NODE_BYTES + free.len() * 4;
            assert_eq!(len, (IMAGE_HEADER_LEN + body) as u64);
            for i in 500..3000u64 {
                assert_eq!(
                    back.get(&hash_key(3, &i.to_le_bytes())),
                    idx.get(&hash_key(3, &i.to_le_bytes()))
                );
            }
            for i in 0..1000u64 {
                let loc = Location {
                    offset: 1 << 30 | i,
                    len: 50,
                };
                back.insert(&hash_key(3, &(i * 7).to_le_bytes()), loc)
                    .unwrap();
            }
            for i in 0..3000u64 {
                let want = if i % 7 == 0 && i / 7 < 1000 {
                    Some(Location {
                        offset: 1 << 30 | (i / 7),
                        len: 50,
                    })
                } else {
                    idx.get(&hash_key(3, &i.to_le_bytes()))
                };
                assert_eq!(back.get(&hash_key(3, &i.to_le_bytes())), want, "{i}");
            }
        }
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A seeded mutator: flips, overwrites, truncations and splices of a valid image, half
    /// of them with both checksums repaired so that the structural checks are what stands
    /// between the bytes and the index. Nothing may panic, and an accepted index must answer
    /// lookups (no cycles, no out-of-range ids).
    #[test]
    fn mutated_images_never_panic_or_loop() {
        let good = sample_bytes("fuzz");
        let iters: u64 = std::env::var("KVS_FUZZ_ITERS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(3000);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut accepted = 0;
        for _ in 0..iters {
            let mut b = good.clone();
            for _ in 0..1 + next() % 4 {
                let pos = (next() % b.len() as u64) as usize;
                match next() % 4 {
                    0 => b[pos] ^= 1 << (next() % 8),
                    1 => b[pos] = next() as u8,
                    2 => b.truncate(pos.max(1)),
                    _ => {
                        let v = (next() % 8000) as u32;
                        let at = pos.min(b.len().saturating_sub(4)) & !3;
                        b[at..at + 4].copy_from_slice(&v.to_le_bytes());
                    }
                }
            }
            if next() % 2 == 0 && b.len() >= IMAGE_HEADER_LEN {
                let body = xxh3_64(&b[IMAGE_HEADER_LEN..]);
                b[56..64].copy_from_slice(&body.to_le_bytes());
                let head = xxh3_64(&b[0..72]);
                b[72..80].copy_from_slice(&head.to_le_bytes());
            }
            if let Ok((index, _)) = decode(&b) {
                accepted += 1;
                for i in 0..200u64 {
                    let _ = index.get(&hash_key(3, &i.to_le_bytes()));
                }
            }
        }
        // Some mutations are harmless (an offset or a length): the lookups above ran.
        assert!(accepted > 0);
    }

    /// A sound header whose counts are beyond any index, over a sparse file of the length
    /// they give (1 TB), is rejected before anything is allocated or read.
    #[test]
    fn counts_beyond_the_id_space_are_rejected_before_allocating() {
        let dir = std::env::temp_dir().join(format!("kvs-image-huge-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("IMAGE_file");
        let (slots, nodes, free) = (1u64 << 20, (1u64 << 40) / NODE_BYTES as u64, 0u64);
        let mut h = [0u8; IMAGE_HEADER_LEN];
        h[0..8].copy_from_slice(&IMAGE_MAGIC);
        h[8..12].copy_from_slice(&IMAGE_VERSION.to_le_bytes());
        h[12..16].copy_from_slice(&(NODE_BYTES as u32).to_le_bytes());
        h[32..40].copy_from_slice(&slots.to_le_bytes());
        h[40..48].copy_from_slice(&nodes.to_le_bytes());
        h[48..56].copy_from_slice(&free.to_le_bytes());
        let hsum = xxh3_64(&h[0..72]);
        h[72..80].copy_from_slice(&hsum.to_le_bytes());
        let file = File::create(&path).unwrap();
        file.write_all_at(&h, 0).unwrap();
        let body = slots * 4 + nodes * NODE_BYTES as u64;
        file.set_len(IMAGE_HEADER_LEN as u64 + body).unwrap();
        drop(file);
        let started = std::time::Instant::now();
        let err = read(&path, true).err().expect("accepted");
        assert!(
            err.to_string().contains("beyond what an index can hold"),
            "{err}"
        );
        assert!(started.elapsed() < std::time::Duration::from_secs(5));
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn damaged_images_are_rejected_without_panic() {
        let good = sample_bytes("dmg");
        // Every truncation and a flipped byte at many positions.
        for cut in (0..good.len()).step_by(97) {
            assert!(decode(&good[..cut]).is_err(), "cut at {cut}");
        }
        for pos in (0..good.len()).step_by(13) {
            let mut b = good.clone();
            b[pos] ^= 0x40;
            assert!(decode(&b).is_err(), "flip at {pos}");
        }
    }
}
