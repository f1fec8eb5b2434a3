//! The in-memory index (the seed's index module): no keys, only where each value lives.
//!
//! A key's 128-bit xxh3 hash (seeded per store) is split in two: the low 64 bits
//! (hash_func_1) choose a slot of the hash table, the high 64 bits (hash_func_2 and
//! hash_func_3, 32 bits each) order the nodes of the tree rooted in that slot. Each tree
//! is a treap whose priority is a bijective mix of the 64-bit fingerprint, so no balance
//! information is stored and the expected depth is O(log n) however keys arrive.
//!
//! Nodes (the seed's IDX_VALUE_INFO) live in one pool addressed by 32-bit ids; freed ids
//! go on a stack and are reused first. A node is 28 bytes; the slot table adds 4 bytes
//! per slot, sized at about half the expected record count.

use xxhash_rust::xxh3::xxh3_128_with_seed;

use crate::error::{Error, Result};

/// "No node": an empty slot or a missing child.
pub const NIL: u32 = u32::MAX;

/// The most nodes the pool holds: ids 0 to 2^32 - 3, so that a count of them (and an
/// image's) stays below `NIL`.
pub const MAX_NODES: usize = NIL as usize - 1;

/// The hashes of a key, as the index uses them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyHash {
    /// hash_func_1: picks the slot.
    pub slot_hash: u64,
    /// hash_func_2 (high 32 bits) and hash_func_3 (low 32 bits): order inside the tree.
    pub fp: u64,
}

/// Hashes a key with the store's seed.
pub fn hash_key(seed: u64, key: &[u8]) -> KeyHash {
    let h = xxh3_128_with_seed(key, seed);
    KeyHash {
        slot_hash: h as u64,
        fp: (h >> 64) as u64,
    }
}

/// Where a record lives in the log: its logical offset (see the segments module) and its
/// unpadded length (header + key + value).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Location {
    pub offset: u64,
    pub len: u32,
}

/// One IDX_VALUE_INFO: 7 x u32 = 28 bytes, 4-byte aligned, so a pool of 10 M costs 280 MB.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Node {
    pub fp_hi: u32,
    pub fp_lo: u32,
    pub off_lo: u32,
    /// Bits 32..64 of the logical log offset (offsets only grow: 64 bits never run out).
    pub off_hi: u32,
    pub len: u32,
    pub left: u32,
    pub right: u32,
}

/// Bytes of one node, in memory and in IMAGE_file.
pub const NODE_BYTES: usize = std::mem::size_of::<Node>();

impl Node {
    fn fp(&self) -> u64 {
        (self.fp_hi as u64) << 32 | self.fp_lo as u64
    }
    fn location(&self) -> Location {
        Location {
            offset: (self.off_hi as u64) << 32 | self.off_lo as u64,
            len: self.len,
        }
    }
    fn set_location(&mut self, loc: Location) {
        self.off_lo = loc.offset as u32;
        self.off_hi = (loc.offset >> 32) as u32;
        self.len = loc.len;
    }
}

/// Whether bit `id` of a bitmap from `Index::in_use` is set (ids past its end: no).
fn is_set(used: &[u64], id: usize) -> bool {
    used.get(id / 64).is_some_and(|w| w >> (id % 64) & 1 == 1)
}

/// New ids for the nodes in use: pool order with the free ids squeezed out. An image
/// written through it holds no free node, so after mass deletes IMAGE_file, and the index
/// an open loads from it, shrink to what the live records need (the pool in memory keeps
/// its peak until then).
pub struct Squeeze {
    used: Vec<u64>,
    /// Ids in use before each word of `used`.
    before: Vec<u32>,
}

impl Squeeze {
    pub fn new(idx: &Index) -> Squeeze {
        let used = idx.in_use();
        let mut before = Vec::with_capacity(used.len());
        let mut n = 0u32;
        for w in &used {
            before.push(n);
            n += w.count_ones();
        }
        Squeeze { used, before }
    }

    /// Whether pool id `id` is in use (kept).
    pub fn keeps(&self, id: usize) -> bool {
        is_set(&self.used, id)
    }

    /// The new id of kept id `id` (NIL stays NIL).
    pub fn id(&self, id: u32) -> u32 {
        if id == NIL {
            return NIL;
        }
        let (w, b) = (id as usize / 64, id % 64);
        self.before[w] + (self.used[w] & ((1u64 << b) - 1)).count_ones()
    }
}

/// The treap priority of a fingerprint: murmur3's 64-bit finaliser, a bijection.
fn priority(fp: u64) -> u64 {
    let mut x = fp;
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

/// The hash table of treaps and the node pool.
#[derive(Clone)]
pub struct Index {
    slots: Vec<u32>,
    nodes: Vec<Node>,
    free: Vec<u32>,
    live: u64,
    live_bytes: u64,
    /// The path of an insert from the root down (node, whether it went left), kept to
    /// reuse its memory. Inserts and removals walk the trees without recursion: a tree made
    /// deep by a damaged image whose checksums were repaired costs them time, not the
    /// stack (found by review).
    path: Vec<(u32, bool)>,
    /// `MAX_NODES`, but for tests of a full pool.
    max_nodes: usize,
}

impl Index {
    /// An empty index sized for `expected` records: slots = next power of two of
    /// expected / 2 (at least 1024), and the pool's address space reserved.
    #[cfg(test)]
    pub fn new(expected: u64) -> Index {
        Index::try_new(expected).expect("memory for the index")
    }

    /// Whether the memory `try_new(expected)` reserves can be had (reserved and given back;
    /// nothing touched).
    pub fn can_reserve(expected: u64) -> Result<()> {
        let mut nodes: Vec<Node> = Vec::new();
        nodes
            .try_reserve_exact(expected.min(u32::MAX as u64 - 1) as usize)
            .map_err(|_| Error::no_memory())?;
        let slots = (expected / 2).max(1024).next_power_of_two() as usize;
        let mut s: Vec<u32> = Vec::new();
        s.try_reserve_exact(slots).map_err(|_| Error::no_memory())?;
        Ok(())
    }

    /// `new`, failing (`Error::Io`, ENOMEM) instead of aborting when the memory for
    /// `expected` records cannot be had: `expected_records` is the user's to set (up to
    /// 2^32 - 2, about 120 GB of index).
    pub fn try_new(expected: u64) -> Result<Index> {
        // The pool's reservation first: the larger, and it touches no memory.
        let mut nodes = Vec::new();
        nodes
            .try_reserve_exact(expected.min(u32::MAX as u64 - 1) as usize)
            .map_err(|_| Error::no_memory())?;
        let slots = (expected / 2).max(1024).next_power_of_two() as usize;
        let mut s = Vec::new();
        s.try_reserve_exact(slots).map_err(|_| Error::no_memory())?;
        s.resize(slots, NIL);
        Ok(Index {
            slots: s,
            nodes,
            free: Vec::new(),
            live: 0,
            live_bytes: 0,
            path: Vec::new(),
            max_nodes: MAX_NODES,
        })
    }

    fn slot_of(&self, h: &KeyHash) -> usize {
        (h.slot_hash & (self.slots.len() as u64 - 1)) as usize
    }

    /// Where the key with these hashes lives, if it is in the index.
    pub fn get(&self, h: &KeyHash) -> Option<Location> {
        let mut t = self.slots[self.slot_of(h)];
        while t != NIL {
            let n = &self.nodes[t as usize];
            let nfp = n.fp();
            if h.fp == nfp {
                return Some(n.location());
            }
            t = if h.fp < nfp { n.left } else { n.right };
        }
        None
    }

    /// Points the key at `loc`; returns where it pointed before, if anywhere.
    /// Fails only for a new key when the pool's `MAX_NODES` ids are all in use (an
    /// overwrite needs no new node).
    pub fn insert(&mut self, h: &KeyHash, loc: Location) -> Result<Option<Location>> {
        let s = self.slot_of(h);
        let fp = h.fp;
        // Down to the key's node, or to where a new one goes.
        let mut path = std::mem::take(&mut self.path);
        path.clear();
        let mut t = self.slots[s];
        while t != NIL {
            let n = &mut self.nodes[t as usize];
            let nfp = n.fp();
            if fp == nfp {
                let old = n.location();
                n.set_location(loc);
                self.path = path;
                self.live_bytes = self.live_bytes - old.len as u64 + loc.len as u64;
                return Ok(Some(old));
            }
            let left = fp < nfp;
            path.push((t, left));
            t = if left { n.left } else { n.right };
        }
        if self.free.is_empty() && self.nodes.len() >= self.max_nodes {
            self.path = path;
            return Err(Error::IndexFull);
        }
        // A new leaf, rotated up while its priority beats its parent's.
        let c = self.alloc(fp, loc);
        let mut top = c;
        while let Some((p, left)) = path.pop() {
            if self.prio(c) > self.prio(p) {
                if left {
                    self.nodes[p as usize].left = self.nodes[c as usize].right;
                    self.nodes[c as usize].right = p;
                } else {
                    self.nodes[p as usize].right = self.nodes[c as usize].left;
                    self.nodes[c as usize].left = p;
                }
                top = c;
            } else {
                self.set_child(p, left, top);
                top = NIL;
                break;
            }
        }
        if top != NIL {
            self.slots[s] = top;
        }
        self.path = path;
        self.live += 1;
        self.live_bytes += loc.len as u64;
        Ok(None)
    }

    /// Whether `n` more keys fit in the node pool.
    pub fn has_room_for(&self, n: usize) -> bool {
        self.free.len() + self.max_nodes.saturating_sub(self.nodes.len()) >= n
    }

    /// Removes the key; returns where it was.
    pub fn remove(&mut self, h: &KeyHash) -> Option<Location> {
        let s = self.slot_of(h);
        let fp = h.fp;
        let mut parent = None;
        let mut t = self.slots[s];
        while t != NIL {
            let n = &self.nodes[t as usize];
            let nfp = n.fp();
            if fp == nfp {
                break;
            }
            let left = fp < nfp;
            parent = Some((t, left));
            t = if left { n.left } else { n.right };
        }
        if t == NIL {
            return None;
        }
        let n = self.nodes[t as usize];
        let node = &mut self.nodes[t as usize];
        (node.left, node.right) = (NIL, NIL);
        self.free.push(t);
        let joined = self.merge(n.left, n.right);
        match parent {
            Some((p, left)) => self.set_child(p, left, joined),
            None => self.slots[s] = joined,
        }
        let old = n.location();
        self.live -= 1;
        self.live_bytes -= old.len as u64;
        Some(old)
    }

    /// Makes `c` the left (or right) child of `p`.
    fn set_child(&mut self, p: u32, left: bool, c: u32) {
        let n = &mut self.nodes[p as usize];
        if left {
            n.left = c;
        } else {
            n.right = c;
        }
    }

    /// Points the entry (slot, fingerprint) at `loc`, or removes it (`None`): a change
    /// read back from IMAGE_delta. Fails if the slot is outside the table.
    pub fn set_in_slot(&mut self, slot: usize, fp: u64, loc: Option<Location>) -> Result<()> {
        if slot >= self.slots.len() {
            return Err(Error::corrupt(
                None,
                format!("slot {slot} of {} in a change", self.slots.len()),
            ));
        }
        let h = KeyHash {
            slot_hash: slot as u64,
            fp,
        };
        match loc {
            Some(loc) => self.insert(&h, loc).map(|_| ()),
            None => {
                self.remove(&h);
                Ok(())
            }
        }
    }

    /// Records in the index.
    pub fn len(&self) -> u64 {
        self.live
    }

    /// Sum of the unpadded record lengths of all live records.
    pub fn live_bytes(&self) -> u64 {
        self.live_bytes
    }

    /// Bytes of memory the index uses: slot table, pool entries in use or free, free stack.
    pub fn memory_bytes(&self) -> u64 {
        (self.slots.len() * 4 + self.nodes.len() * NODE_BYTES + self.free.capacity() * 4) as u64
    }

    /// Number of slots in the hash table.
    pub fn slot_count(&self) -> usize {
        self.slots.len()
    }

    /// The slot a key hash falls in.
    pub fn slot_for(&self, h: &KeyHash) -> usize {
        self.slot_of(h)
    }

    /// Appends (slot, fingerprint, location) of every record in slots `range`, in order.
    pub fn entries(&self, range: std::ops::Range<usize>, out: &mut Vec<(usize, u64, Location)>) {
        let mut stack = Vec::new();
        for slot in range {
            if let Some(&root) = self.slots.get(slot) {
                stack.push(root);
            }
            while let Some(t) = stack.pop() {
                if t == NIL {
                    continue;
                }
                let n = &self.nodes[t as usize];
                out.push((slot, n.fp(), n.location()));
                stack.push(n.left);
                stack.push(n.right);
            }
        }
    }

    /// Where the record with fingerprint `fp` in `slot` lives, if anywhere.
    pub fn get_in_slot(&self, slot: usize, fp: u64) -> Option<Location> {
        let mut t = *self.slots.get(slot)?;
        while t != NIL {
            let n = &self.nodes[t as usize];
            if fp == n.fp() {
                return Some(n.location());
            }
            t = if fp < n.fp() { n.left } else { n.right };
        }
        None
    }

    /// Calls `f` with the location of every record in the index, in pool order (one linear
    /// pass over the pool; much faster than walking the trees).
    pub fn for_each_location(&self, f: impl FnMut(Location)) {
        self.locations_of(0..self.nodes.len(), &self.in_use(), f);
    }

    /// The pool's ids in use (in a tree, not on the free stack), as a bitmap: bit `i % 64`
    /// of word `i / 64` is set for id `i`.
    pub fn in_use(&self) -> Vec<u64> {
        let mut bits = vec![u64::MAX; self.nodes.len().div_ceil(64)];
        for &id in &self.free {
            bits[id as usize / 64] &= !(1 << (id % 64));
        }
        bits
    }

    /// The pool's length: ids below it have been handed out.
    pub fn pool_len(&self) -> usize {
        self.nodes.len()
    }

    /// Calls `f` with the location of each node with an id in `ids` that is set in `used`
    /// (from `in_use`; ids past its end count as not in use), in id order.
    pub fn locations_of(
        &self,
        ids: std::ops::Range<usize>,
        used: &[u64],
        mut f: impl FnMut(Location),
    ) {
        let end = ids.end.min(self.nodes.len());
        for id in ids.start.min(end)..end {
            if is_set(used, id) {
                f(self.nodes[id].location());
            }
        }
    }

    /// The slot table, the pool and the free-id stack, for IMAGE_file.
    pub fn parts(&self) -> (&[u32], &[Node], &[u32]) {
        (&self.slots, &self.nodes, &self.free)
    }

    /// Rebuilds an index from the parts of an image, checking in sequential passes that
    /// they form trees: every id in range, every free node without children, every other
    /// node with exactly one parent (a slot or a node). That rules out any cycle reachable
    /// from a slot, so lookups always end; corrupt parts are an error, never a panic or a
    /// loop. (Fingerprint order is not checked: the image checksum guards the bytes, and a
    /// misordered tree could only make lookups miss.)
    pub fn from_parts(slots: Vec<u32>, nodes: Vec<Node>, free: Vec<u32>) -> Result<Index> {
        let bad = |m: &str| Err(Error::corrupt(None, format!("IMAGE_file index: {m}")));
        if slots.is_empty() || !slots.len().is_power_of_two() {
            return bad("slot count is not a power of two");
        }
        if nodes.len() > MAX_NODES {
            return bad("too many nodes");
        }
        // One bit per node, claimed once by the free stack, a slot or a parent; bitmaps
        // (1.2 MiB at 10 M nodes) rather than a byte per node, since the claims land at
        // random ids: a byte array of 10 MiB missed the cache on most of them and took
        // most of a clean open's time.
        let words = nodes.len().div_ceil(64);
        let mut claimed = vec![0u64; words];
        let claim = |id: u32, claimed: &mut [u64]| -> bool {
            let id = id as usize;
            if id >= nodes.len() {
                return false;
            }
            let (w, bit) = (id / 64, 1u64 << (id % 64));
            let fresh = claimed[w] & bit == 0;
            claimed[w] |= bit;
            fresh
        };
        let mut is_free = vec![0u64; if free.is_empty() { 0 } else { words }];
        for &id in &free {
            if !claim(id, &mut claimed) {
                return bad("free stack names a bad or repeated id");
            }
            is_free[id as usize / 64] |= 1 << (id % 64);
        }
        for &root in slots.iter().filter(|&&r| r != NIL) {
            if !claim(root, &mut claimed) {
                return bad("a slot names a bad or shared id");
            }
        }
        let mut live_bytes = 0u64;
        for (i, n) in nodes.iter().enumerate() {
            if is_set(&is_free, i) {
                if n.left != NIL || n.right != NIL {
                    return bad("a free node has children");
                }
                continue;
            }
            live_bytes += n.len as u64;
            for c in [n.left, n.right] {
                if c != NIL && !claim(c, &mut claimed) {
                    return bad("a node has two parents, or a child id is bad or free");
                }
            }
        }
        // `claim` sets no bit past the last node: every node claimed is every bit set.
        let claims: usize = claimed.iter().map(|w| w.count_ones() as usize).sum();
        if claims != nodes.len() {
            return bad("a node is neither in a tree nor free");
        }
        Ok(Index {
            live: (nodes.len() - free.len()) as u64,
            slots,
            nodes,
            free,
            live_bytes,
            path: Vec::new(),
            max_nodes: MAX_NODES,
        })
    }

    fn alloc(&mut self, fp: u64, loc: Location) -> u32 {
        let mut n = Node {
            fp_hi: (fp >> 32) as u32,
            fp_lo: fp as u32,
            off_lo: 0,
            off_hi: 0,
            len: 0,
            left: NIL,
            right: NIL,
        };
        n.set_location(loc);
        match self.free.pop() {
            Some(id) => {
                self.nodes[id as usize] = n;
                id
            }
            None => {
                self.nodes.push(n);
                (self.nodes.len() - 1) as u32
            }
        }
    }

    fn prio(&self, id: u32) -> u64 {
        priority(self.nodes[id as usize].fp())
    }

    /// Joins two treaps where every fingerprint of `a` is below every one of `b`: down
    /// the right spine of `a` and the left spine of `b`, the higher priority first.
    fn merge(&mut self, mut a: u32, mut b: u32) -> u32 {
        let mut root = NIL;
        let mut link: Option<(u32, bool)> = None;
        loop {
            let next = if a == NIL || (b != NIL && self.prio(a) <= self.prio(b)) {
                b
            } else {
                a
            };
            match link {
                None => root = next,
                Some((p, left)) => self.set_child(p, left, next),
            }
            if a == NIL || b == NIL {
                return root;
            }
            if next == a {
                link = Some((a, false));
                a = self.nodes[a as usize].right;
            } else {
                link = Some((b, true));
                b = self.nodes[b as usize].left;
            }
        }
    }

    /// The deepest tree.
    #[cfg(test)]
    pub fn max_depth(&self) -> usize {
        fn depth(nodes: &[Node], t: u32) -> usize {
            if t == NIL {
                0
            } else {
                let n = &nodes[t as usize];
                1 + depth(nodes, n.left).max(depth(nodes, n.right))
            }
        }
        self.slots
            .iter()
            .map(|&r| depth(&self.nodes, r))
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn loc(i: u64) -> Location {
        Location {
            offset: i * 8,
            len: i as u32 + 32,
        }
    }

    #[test]
    fn node_is_28_bytes() {
        assert_eq!(NODE_BYTES, 28);
    }

    #[test]
    fn matches_a_hashmap_under_random_operations() {
        // A tiny table (1024 slots, 20k keys) so that trees are deep and rotations frequent.
        let mut idx = Index::new(1);
        let mut model: HashMap<u64, Location> = HashMap::new();
        let mut x = 99u64;
        for step in 0..200_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) % 20_000;
            let h = hash_key(7, &k.to_le_bytes());
            if (x >> 20) % 3 == 0 {
                assert_eq!(idx.remove(&h), model.remove(&k), "step {step}");
            } else {
                let l = loc(step);
                assert_eq!(
                    idx.insert(&h, l).unwrap(),
                    model.insert(k, l),
                    "step {step}"
                );
            }
            if step % 10_000 == 0 {
                for (k, l) in &model {
                    assert_eq!(idx.get(&hash_key(7, &k.to_le_bytes())), Some(*l));
                }
            }
        }
        assert_eq!(idx.len(), model.len() as u64);
        let sum: u64 = model.values().map(|l| l.len as u64).sum();
        assert_eq!(idx.live_bytes(), sum);
        check_treaps(&idx);
        // 20k keys over 1024 slots: ~13 per tree; a treap keeps depth near 2 ln n.
        assert!(idx.max_depth() < 40, "depth {}", idx.max_depth());
        // Freed ids are reused: the pool never outgrows the peak live count by much.
        assert!(idx.parts().1.len() <= 20_000);
    }

    /// Every tree is a treap: fingerprints in order, each node's priority at least its
    /// children's.
    fn check_treaps(idx: &Index) {
        fn walk(idx: &Index, t: u32, lo: Option<u64>, hi: Option<u64>) {
            if t == NIL {
                return;
            }
            let n = idx.nodes[t as usize];
            let fp = n.fp();
            assert!(lo.is_none_or(|l| fp > l) && hi.is_none_or(|h| fp < h));
            for c in [n.left, n.right] {
                assert!(c == NIL || idx.prio(c) <= idx.prio(t), "heap order");
            }
            walk(idx, n.left, lo, Some(fp));
            walk(idx, n.right, Some(fp), hi);
        }
        for &root in &idx.slots {
            walk(idx, root, None, None);
        }
    }

    /// Found by review: inserts and removals recursed once per level, so a tree made deep
    /// by a damaged IMAGE_file whose checksums were repaired (`from_parts` checks the
    /// links, not the order) overflowed the stack: an abort. They now loop.
    #[test]
    fn a_deep_tree_from_a_damaged_image_costs_no_stack() {
        const DEEP: u32 = 200_000;
        let node = |fp: u64, right: u32| Node {
            fp_hi: (fp >> 32) as u32,
            fp_lo: fp as u32,
            off_lo: 0,
            off_hi: 0,
            len: 40,
            left: NIL,
            right,
        };
        // One chain down the right: fingerprints 1, 2, 3, ... in slot 0.
        let nodes: Vec<Node> = (0..DEEP)
            .map(|i| node(i as u64 + 1, if i + 1 < DEEP { i + 1 } else { NIL }))
            .collect();
        let mut slots = vec![NIL; 1024];
        slots[0] = 0;
        let mut idx = Index::from_parts(slots, nodes, Vec::new()).unwrap();
        // A thread with a small stack: 200 000 frames would not fit.
        std::thread::Builder::new()
            .stack_size(256 << 10)
            .spawn(move || {
                let at = |fp: u64| KeyHash { slot_hash: 0, fp };
                let deepest = at(DEEP as u64);
                assert_eq!(idx.get(&deepest).map(|l| l.len), Some(40));
                let new = Location { offset: 8, len: 50 };
                assert_eq!(idx.insert(&at(DEEP as u64 + 1), new).unwrap(), None);
                assert_eq!(idx.get(&at(DEEP as u64 + 1)), Some(new));
                assert!(idx.remove(&deepest).is_some());
                assert!(idx.remove(&at(DEEP as u64 / 2)).is_some());
                assert_eq!(idx.get(&deepest), None);
                assert_eq!(idx.len(), DEEP as u64 - 1);
                assert_eq!(idx.get(&at(3)).map(|l| l.len), Some(40));
            })
            .unwrap()
            .join()
            .unwrap();
    }

    /// Found by review: with the pool full, an overwrite failed with `IndexFull` although
    /// it needs no new node (the check came before the lookup): at capacity a store could
    /// neither overwrite a key nor install a reclaimer's copy.
    #[test]
    fn a_full_pool_still_takes_overwrites_and_removals() {
        let mut idx = Index::new(1);
        idx.max_nodes = 100;
        let h = |i: u64| hash_key(9, &i.to_le_bytes());
        for i in 0..100 {
            idx.insert(&h(i), loc(i)).unwrap();
        }
        assert!(!idx.has_room_for(1));
        assert!(matches!(
            idx.insert(&h(100), loc(100)),
            Err(Error::IndexFull)
        ));
        assert_eq!(idx.len(), 100);
        assert_eq!(idx.insert(&h(7), loc(500)).unwrap(), Some(loc(7)));
        assert_eq!(idx.get(&h(7)), Some(loc(500)));
        assert_eq!(idx.remove(&h(8)), Some(loc(8)));
        assert_eq!(idx.insert(&h(100), loc(100)).unwrap(), None);
        assert_eq!(idx.len(), 100);
        check_treaps(&idx);
    }

    #[test]
    fn passes_over_the_pool_see_each_record_once_and_no_freed_node() {
        let mut idx = Index::new(1);
        let mut model: HashMap<u64, Location> = HashMap::new();
        let mut x = 5u64;
        let mut with_free = 0;
        for step in 0..60_000u64 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let k = (x >> 33) % 3_000;
            let h = hash_key(3, &k.to_le_bytes());
            if (x >> 20) % 2 == 0 {
                idx.remove(&h);
                model.remove(&k);
            } else {
                idx.insert(&h, loc(step)).unwrap();
                model.insert(k, loc(step));
            }
            if step % 997 == 0 {
                with_free += !idx.parts().2.is_empty() as u32;
                let mut want: Vec<u64> = model.values().map(|l| l.offset).collect();
                want.sort_unstable();
                let mut whole = Vec::new();
                idx.for_each_location(|l| whole.push(l.offset));
                whole.sort_unstable();
                assert_eq!(whole, want, "step {step}");
                // In pieces, as Engine::for_each_location reads it (a read lock per piece).
                let used = idx.in_use();
                let mut pieces = Vec::new();
                for start in (0..idx.pool_len() + 100).step_by(61) {
                    idx.locations_of(start..start + 61, &used, |l| pieces.push(l.offset));
                }
                pieces.sort_unstable();
                assert_eq!(pieces, want, "step {step}");
            }
        }
        assert!(
            with_free > 30,
            "freed ids were on the stack in {with_free} checks"
        );
    }

    #[test]
    fn parts_round_trip_and_corrupt_parts_are_rejected() {
        let mut idx = Index::new(1);
        for i in 0..5000u64 {
            idx.insert(&hash_key(1, &i.to_le_bytes()), loc(i)).unwrap();
        }
        for i in 0..1000u64 {
            idx.remove(&hash_key(1, &i.to_le_bytes()));
        }
        let (s, n, f) = idx.parts();
        let back = Index::from_parts(s.to_vec(), n.to_vec(), f.to_vec()).unwrap();
        assert_eq!(back.len(), 4000);
        assert_eq!(back.live_bytes(), idx.live_bytes());
        for i in 1000..5000u64 {
            assert_eq!(back.get(&hash_key(1, &i.to_le_bytes())), Some(loc(i)));
        }
        // A cycle: a node pointing at its own slot's root.
        let mut nodes = n.to_vec();
        let root = s.iter().copied().find(|&r| r != NIL).unwrap();
        nodes[root as usize].left = root;
        assert!(Index::from_parts(s.to_vec(), nodes, f.to_vec()).is_err());
        // An id out of range.
        let mut slots = s.to_vec();
        slots[0] = n.len() as u32 + 5;
        assert!(Index::from_parts(slots, n.to_vec(), f.to_vec()).is_err());
        // A node reachable twice (a child of two nodes).
        let mut nodes = n.to_vec();
        let (a, b) = {
            let mut with_child =
                (0..nodes.len()).filter(|&i| nodes[i].left != NIL && !f.contains(&(i as u32)));
            (with_child.next().unwrap(), with_child.next().unwrap())
        };
        nodes[b].right = nodes[a].left;
        assert!(Index::from_parts(s.to_vec(), nodes, f.to_vec()).is_err());
        // A lost node.
        let mut free = f.to_vec();
        free.pop();
        assert!(Index::from_parts(s.to_vec(), n.to_vec(), free).is_err());
        // A free node with a child (the child then has two claims or none left).
        let mut nodes = n.to_vec();
        nodes[f[0] as usize].left = f[1];
        let Err(err) = Index::from_parts(s.to_vec(), nodes, f.to_vec()) else {
            panic!("accepted");
        };
        assert!(err.to_string().contains("free node has children"), "{err}");
        // The last node lost, in the bitmap's last, partial word (5000 = 78 * 64 + 8):
        // the pool grown by one node nobody names.
        assert_ne!(n.len() % 64, 0);
        let mut nodes = n.to_vec();
        nodes.push(nodes[0]);
        nodes.last_mut().unwrap().left = NIL;
        nodes.last_mut().unwrap().right = NIL;
        let Err(err) = Index::from_parts(s.to_vec(), nodes, f.to_vec()) else {
            panic!("accepted");
        };
        assert!(
            err.to_string().contains("neither in a tree nor free"),
            "{err}"
        );
        // A pool of a whole number of words, every node in use, reads back.
        let mut idx = Index::new(1);
        for i in 0..128u64 {
            idx.insert(&hash_key(1, &i.to_le_bytes()), loc(i)).unwrap();
        }
        let (s, n, f) = idx.parts();
        assert_eq!((n.len(), f.len()), (128, 0));
        assert_eq!(
            Index::from_parts(s.to_vec(), n.to_vec(), vec![])
                .unwrap()
                .len(),
            128
        );
    }
}
