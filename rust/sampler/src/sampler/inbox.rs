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

use std::ops::{Deref, DerefMut};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use super::lock;
use crate::regions::{Edge, Mark, Regions, Span};

/// A mark or a span, as pushed.
#[derive(Clone, Copy, Debug)]
pub(super) enum Entry {
    Mark(Mark),
    Span(Span),
}

struct Node {
    entry: Entry,
    /// The entry pushed before this one (toward the oldest), null for the oldest.
    next: *mut Node,
}

#[derive(Default)]
pub(super) struct Inbox {
    head: AtomicPtr<Node>,
}

impl Inbox {
    /// Hand `entry` over (any thread; lock-free).
    #[inline]
    pub(super) fn push(&self, entry: Entry) {
        let node = Box::into_raw(Box::new(Node {
            entry,
            next: ptr::null_mut(),
        }));
        let mut head = self.head.load(Ordering::Relaxed);
        loop {
            // SAFETY: `node` is this thread's own until the compare-and-swap publishes it.
            unsafe { (*node).next = head };
            // Release: the entry and its link are visible to the reader that takes the head.
            // Every change of the head is a read-modify-write, so the reader's acquire sees
            // every entry of the chain, not only the newest.
            match self
                .head
                .compare_exchange_weak(head, node, Ordering::Release, Ordering::Relaxed)
            {
                Ok(_) => return,
                Err(now) => head = now,
            }
        }
    }

    /// Take everything handed over so far, oldest first.
    pub(super) fn take(&self) -> Taken {
        if self.head.load(Ordering::Relaxed).is_null() {
            return Taken(ptr::null_mut());
        }
        let mut p = self.head.swap(ptr::null_mut(), Ordering::Acquire);
        let mut oldest_first: *mut Node = ptr::null_mut();
        while !p.is_null() {
            // SAFETY: the swap made the chain this thread's alone; each node came from
            // `Box::into_raw` in `push` and is visited once.
            unsafe {
                let next = (*p).next;
                (*p).next = oldest_first;
                oldest_first = p;
                p = next;
            }
        }
        Taken(oldest_first)
    }
}

impl Drop for Inbox {
    fn drop(&mut self) {
        drop(self.take());
    }
}

/// Entries taken from the inbox, oldest first (freed as they are read, or when dropped).
pub(super) struct Taken(*mut Node);

impl Iterator for Taken {
    type Item = Entry;

    fn next(&mut self) -> Option<Entry> {
        if self.0.is_null() {
            return None;
        }
        // SAFETY: the chain is owned by this `Taken` (see `Inbox::take`); each node is turned
        // back into its box once.
        let node = unsafe { Box::from_raw(self.0) };
        self.0 = node.next;
        Some(node.entry)
    }
}

impl Drop for Taken {
    fn drop(&mut self) {
        for _ in self.by_ref() {}
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
        self.done_len.store(self.r.done.len(), Ordering::Relaxed);
    }
}

#[cfg(test)]
#[path = "inbox_tests.rs"]
mod tests;
