//! The inbox: how a thread marking a region hands its mark or span to the sampler without
//! taking any lock (the sampler thread holds the regions lock while it takes work and hands
//! results back, and may be descheduled holding it).
//!
//! A stack that is only pushed onto and emptied whole. A push links one entry in by a
//! compare-and-swap of the head; the reader swaps the head out, takes the chain, and reverses
//! it. Each push is placed in one total order, the order of the head's modifications (its
//! successful compare-and-swap): a chain taken holds a prefix of that order, newest first, so
//! reversed and appended after the chains taken before it, the entries come out in that order.
//! A push that completes before another begins (a region's enter, then its exit, on any
//! threads) comes out first. The reader never waits for a marking thread (a push is visible
//! whole or not at all) and a marking thread never waits for the reader; a failed
//! compare-and-swap means another push succeeded. Nothing is ever popped singly, so a head
//! that was taken and reused between a push's read and its compare-and-swap (the ABA case) is
//! harmless: the new entry links to what the head is, which is all a push assumes.
//!
//! Entries live in slots that are reused, not allocated per push (an allocation per mark, freed
//! by the sampler thread, cost more than the lock it replaces): the reader hands a chain it has
//! read back to a list of spare slots in one step, and a push pops one spare slot (a new one
//! when there is none). Slots are numbered and never freed while the inbox lives (chunks of
//! doubling size, so a slot's memory stays valid for any thread that read its number), and the
//! spare list's head carries a count of its changes beside the slot number: a pop whose slot
//! was taken and handed back meanwhile (ABA) fails its compare-and-swap and tries again. Only
//! a pop that stands between its read and its compare-and-swap while the list changes 2^32
//! times (over half an hour at two million marks a second), and then finds the count exactly
//! where it was and the same slot first, could succeed wrongly: not guarded against. The
//! slots kept are as many as were ever waiting at once (as a queue keeps its capacity).

use std::alloc::{alloc_zeroed, dealloc, handle_alloc_error, Layout};
use std::cell::UnsafeCell;
use std::mem::MaybeUninit;
use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::lock;
use crate::regions::{Edge, Mark, Regions, Span};

/// A mark or a span, as pushed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Entry {
    Mark(Mark),
    Span(Span),
}

struct Slot {
    /// Written by the thread that popped the slot, before it publishes it; read by the reader
    /// that took it, before it hands it back.
    entry: UnsafeCell<MaybeUninit<Entry>>,
    /// The next slot (its number + 1; 0: none): toward the oldest in the inbox, the next spare
    /// in the spare list.
    next: AtomicU32,
}

/// The most slots made (numbers 1 to this, below `u32::MAX`).
const MAX_SLOTS: u32 = u32::MAX - 1;

/// Slots in chunk `c`: 64 << c.
const FIRST_CHUNK: u64 = 64;
const CHUNKS: usize = 27;

/// Chunk and offset of slot `n` (numbered from 1).
fn place(n: u32) -> (usize, usize) {
    let j = u64::from(n - 1) + FIRST_CHUNK;
    let c = (63 - j.leading_zeros() as u64 - FIRST_CHUNK.trailing_zeros() as u64) as usize;
    (c, (j - (FIRST_CHUNK << c)) as usize)
}

fn chunk_layout(c: usize) -> Layout {
    Layout::array::<Slot>((FIRST_CHUNK << c) as usize).unwrap_or_else(|_| unreachable!())
}

#[derive(Default)]
pub(super) struct Inbox {
    /// The newest slot pushed (its number; 0: empty).
    head: AtomicU32,
    /// The spare list's first slot (low 32 bits) and the count of the list's changes (high).
    spare: AtomicU64,
    /// Slots handed out from the chunks so far.
    made: AtomicU32,
    chunks: [AtomicPtr<Slot>; CHUNKS],
}

// Shared between threads as it is (its fields are atomics): a slot's entry is written only by
// the one thread that popped the slot, and read only by the reader that took it from the inbox,
// each ordered by the release and acquire of the heads (see `push`, `take`, `Taken::drop`).
// The compiler makes the inbox `Sync` from its atomics whatever an entry holds (the slots sit
// behind raw pointers), and an entry moves from the pushing thread to the reader: so an entry
// must be `Send`, and `Copy` (nothing to drop in a slot, read by copy).
const _: () = {
    const fn sendable_plain_data<T: Send + Copy>() {}
    sendable_plain_data::<Entry>();
};

impl Inbox {
    fn slot(&self, n: u32) -> &Slot {
        let (c, i) = place(n);
        let base = self.chunks[c].load(Ordering::Acquire);
        debug_assert!(!base.is_null());
        // SAFETY: slot `n` was handed out after its chunk was installed (`make`), and whoever
        // holds its number got it through an acquire that follows that; chunks live as long as
        // the inbox.
        unsafe { &*base.add(i) }
    }

    /// A new slot from the chunks (none spare).
    #[cold]
    fn make(&self) -> u32 {
        // Refused at the cap, never wrapped: a count that wrapped would hand out numbers of
        // slots in use, each then written by two threads (a chain that loops).
        let Ok(made) = self
            .made
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |m| {
                (m < MAX_SLOTS).then_some(m + 1)
            })
        else {
            panic!("more than 4 billion marks waiting");
        };
        let n = made + 1;
        let (c, _) = place(n);
        if self.chunks[c].load(Ordering::Acquire).is_null() {
            let layout = chunk_layout(c);
            // SAFETY: the layout has a non-zero size; zeroed slots are valid (an uninit entry,
            // a zero link).
            let fresh = unsafe { alloc_zeroed(layout) }.cast::<Slot>();
            if fresh.is_null() {
                handle_alloc_error(layout);
            }
            if self.chunks[c]
                .compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                // Another thread installed it first.
                // SAFETY: allocated above with this layout, never shared.
                unsafe { dealloc(fresh.cast(), layout) };
            }
        }
        n
    }

    /// A spare slot, if any.
    fn pop_spare(&self) -> Option<u32> {
        let mut h = self.spare.load(Ordering::Acquire);
        loop {
            let n = h as u32;
            if n == 0 {
                return None;
            }
            // Possibly stale (popped and reused meanwhile): then the count has changed and the
            // compare-and-swap fails.
            let next = self.slot(n).next.load(Ordering::Relaxed);
            let new = ((h >> 32).wrapping_add(1) << 32) | u64::from(next);
            match self
                .spare
                .compare_exchange_weak(h, new, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => return Some(n),
                Err(now) => h = now,
            }
        }
    }

    /// Hand `entry` over (any thread; lock-free).
    #[inline]
    pub(super) fn push(&self, entry: Entry) {
        let n = self.pop_spare().unwrap_or_else(|| self.make());
        let slot = self.slot(n);
        // SAFETY: this thread popped the slot: nobody else writes or reads it until it is
        // published below.
        unsafe { (*slot.entry.get()).write(entry) };
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            slot.next.store(head, Ordering::Relaxed);
            // Release: the entry and its link are visible to the reader that takes the head.
            // Every change of the head is a read-modify-write, so the reader's acquire sees
            // every entry of the chain, not only the newest.
            match self
                .head
                .compare_exchange_weak(head, n, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Take everything handed over so far, oldest first.
    pub(super) fn take(&self) -> Taken<'_> {
        // A read-modify-write, not a load first: it reads the latest head, so whatever was
        // pushed before it (a region's marks before a flush that waits for them) is taken.
        let mut p = self.head.swap(0, Ordering::Acquire);
        let newest = p;
        let mut oldest_first = 0;
        while p != 0 {
            // The swap made the chain this thread's alone.
            let s = self.slot(p);
            let next = s.next.load(Ordering::Relaxed);
            s.next.store(oldest_first, Ordering::Relaxed);
            oldest_first = p;
            p = next;
        }
        Taken {
            inbox: self,
            first: oldest_first,
            at: oldest_first,
            last: newest,
        }
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        for (c, chunk) in self.chunks.iter().enumerate() {
            let p = chunk.load(Ordering::Acquire);
            if !p.is_null() {
                // SAFETY: allocated in `make` with this layout; nothing else holds the inbox.
                unsafe { dealloc(p.cast(), chunk_layout(c)) };
            }
        }
    }
}

/// Entries taken from the inbox, oldest first; their slots go back to the spare list when
/// this is dropped.
pub(super) struct Taken<'a> {
    inbox: &'a Inbox,
    first: u32,
    at: u32,
    last: u32,
}

impl Iterator for Taken<'_> {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.at == 0 {
            return None;
        }
        let s = self.inbox.slot(self.at);
        self.at = s.next.load(Ordering::Relaxed);
        // SAFETY: the pushing thread wrote the entry before its release, which `take`'s
        // acquire saw; the slot is this reader's until it is handed back.
        Some(unsafe { (*s.entry.get()).assume_init() })
    }
}

impl Drop for Taken<'_> {
    fn drop(&mut self) {
        if self.first == 0 {
            return;
        }
        // The chain runs first → last (oldest first): link its last slot to the spare list and
        // make its first the list's head, in one compare-and-swap (release: the entries were
        // read before any pusher reuses a slot).
        let tail = self.inbox.slot(self.last);
        let mut h = self.inbox.spare.load(Ordering::Relaxed);
        loop {
            tail.next.store(h as u32, Ordering::Relaxed);
            let new = ((h >> 32).wrapping_add(1) << 32) | u64::from(self.first);
            match self.inbox.spare.compare_exchange_weak(
                h,
                new,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => h = now,
            }
        }
    }
}

/// The regions locked, with the inbox moved in; on release, the count of resolved rows waiting
/// (`done.len()`) is published for the marking threads, which read it without the lock.
pub(super) struct RegionsGuard<'a> {
    r: MutexGuard<'a, Regions>,
    done_len: &'a AtomicUsize,
}

impl<'a> RegionsGuard<'a> {
    pub(super) fn new(m: &'a Mutex<Regions>, inbox: &Inbox, done_len: &'a AtomicUsize) -> Self {
        let mut r = lock(m);
        absorb(inbox, &mut r);
        RegionsGuard { r, done_len }
    }
}

impl Deref for RegionsGuard<'_> {
    type Target = Regions;
    fn deref(&self) -> &Regions {
        &self.r
    }
}

impl DerefMut for RegionsGuard<'_> {
    fn deref_mut(&mut self) -> &mut Regions {
        &mut self.r
    }
}

impl Drop for RegionsGuard<'_> {
    fn drop(&mut self) {
        // Stored only when it changed: the marking threads read its cache line at every mark.
        let n = self.r.done.len();
        if self.done_len.load(Ordering::Relaxed) != n {
            self.done_len.store(n, Ordering::Relaxed);
        }
    }
}

/// Move everything in `inbox` into `r` (under the regions lock): marks after the pending ones
/// in the order they were pushed (an enter before its exit), spans into `r.spans` kept in order
/// of their end. Counts the regions begun.
pub(super) fn absorb(inbox: &Inbox, r: &mut Regions) {
    let mut spans: Vec<Span> = Vec::new();
    for e in inbox.take() {
        match e {
            Entry::Mark(m) => {
                if m.edge == Edge::Enter {
                    r.begun += 1;
                }
                r.pending.push_back(m);
            }
            Entry::Span(s) => {
                r.begun += 1;
                spans.push(s);
            }
        }
    }
    let Some(earliest) = spans.iter().map(Span::t1_ns).min() else {
        return;
    };
    // Stamped before they were pushed, spans arrive nearly in order of their end: only those
    // waiting that end after the earliest new one are sorted again with the new ones (a sort
    // of runs nearly in order costs about their length). `Regions::take_ready` and
    // `wait_until_resolved` read `spans` as ordered by end.
    let from = r.spans.partition_point(|s| s.t1_ns() <= earliest);
    r.spans.extend_from_slice(&spans);
    r.spans[from..].sort_by_key(Span::t1_ns);
}

#[cfg(test)]
#[path = "inbox_tests.rs"]
mod tests;
