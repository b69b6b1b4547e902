//! The inbox: order and counts with several producers, spans kept in order of their end, and
//! marking threads that finish while the regions lock is held.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{mpsc, Arc};
use std::time::Duration;

use super::*;
use crate::sampler::config::Config;
use crate::sampler::fake_source::package;
use crate::sampler::handle::WAKE_QUIET;
use crate::sampler::Sampler;
use crate::sensors::CounterSpec;

fn mark(id: u64, t_ns: u64, edge: Edge) -> Entry {
    Entry::Mark(Mark {
        id,
        t_ns,
        edge,
        tag: 0,
    })
}

/// The ids of the marks an inbox hands over, in the order taken (it holds marks only).
fn mark_ids(inbox: &Inbox) -> Vec<u64> {
    inbox
        .take()
        .map(|e| match e {
            Entry::Mark(m) => m.id,
            Entry::Span(_) => unreachable!(),
        })
        .collect()
}

fn span(t0_ns: u64, dur_ns: u32) -> Entry {
    Entry::Span(Span {
        t0_ns,
        dur_ns,
        tag: 0,
    })
}

/// A generous bound on what must not hang (never reached unless the code under test is
/// broken): the test fails instead of waiting forever.
const HANG: Duration = Duration::from_secs(120);

#[test]
fn producers_pushing_while_the_reader_takes_lose_nothing_and_keep_their_order() {
    // Four threads push 5 000 regions each (an enter, then its exit) while the reader takes
    // and absorbs concurrently: every entry comes out once, each thread's in its own order,
    // and every enter before its exit.
    const THREADS: u64 = 4;
    const REGIONS: u64 = 5_000;
    let inbox = Arc::new(Inbox::default());
    let producers: Vec<_> = (0..THREADS)
        .map(|p| {
            let inbox = Arc::clone(&inbox);
            std::thread::spawn(move || {
                for k in 0..REGIONS {
                    let id = p * REGIONS + k + 1;
                    inbox.push(mark(id, 2 * k, Edge::Enter));
                    inbox.push(mark(id, 2 * k + 1, Edge::Exit));
                }
            })
        })
        .collect();
    let mut r = Regions::default();
    let mut reads = 0;
    while r.pending.len() < (2 * THREADS * REGIONS) as usize {
        absorb(&inbox, &mut r);
        reads += 1;
        if reads % 64 == 0 {
            std::thread::yield_now();
        }
    }
    for p in producers {
        p.join().unwrap();
    }
    absorb(&inbox, &mut r);
    assert_eq!(r.pending.len(), (2 * THREADS * REGIONS) as usize);
    assert_eq!(r.begun, THREADS * REGIONS);
    let mut last: HashMap<u64, u64> = HashMap::new();
    let mut entered: HashMap<u64, bool> = HashMap::new();
    for m in &r.pending {
        let producer = (m.id - 1) / REGIONS;
        if let Some(&prev) = last.get(&producer) {
            assert!(
                m.t_ns == prev + 1,
                "thread {producer}: {} after {prev}",
                m.t_ns
            );
        } else {
            assert_eq!(m.t_ns, 0);
        }
        last.insert(producer, m.t_ns);
        match m.edge {
            Edge::Enter => assert!(entered.insert(m.id, false).is_none()),
            Edge::Exit => assert_eq!(entered.insert(m.id, true), Some(false), "id {}", m.id),
        }
    }
    assert!(entered.values().all(|&exited| exited));
}

#[test]
fn spans_arriving_out_of_order_are_kept_in_order_of_their_end() {
    let inbox = Inbox::default();
    let mut r = Regions::default();
    for t1 in [10, 20, 30] {
        inbox.push(span(t1 - 5, 5));
    }
    absorb(&inbox, &mut r);
    // Stamped before they were pushed: one that ends at 15 comes after one that ends at 25.
    for (t0, d) in [(20, 5), (10, 5), (35, 5), (38, 1)] {
        inbox.push(span(t0, d));
    }
    inbox.push(mark(1, 12, Edge::Enter));
    absorb(&inbox, &mut r);
    let ends: Vec<u64> = r.spans.iter().map(Span::t1_ns).collect();
    assert_eq!(ends, vec![10, 15, 20, 25, 30, 39, 40]);
    assert_eq!(r.begun, 8);
    assert_eq!(r.pending.len(), 1);
    // take_ready takes exactly those ending by the frontier.
    let w = r.take_ready(26, false);
    assert_eq!(w.spans.len(), 4);
    assert_eq!(r.spans.first().map(Span::t1_ns), Some(30));
}

#[test]
fn an_inbox_dropped_full_frees_what_it_holds() {
    // Under Miri or a leak checker this is the test that would flag a lost node; here it runs
    // the paths (entries taken and partly read, then dropped; an inbox dropped non-empty).
    let inbox = Inbox::default();
    for k in 0..100 {
        inbox.push(span(k, 1));
    }
    let mut taken = inbox.take();
    assert!(taken.next().is_some());
    drop(taken);
    for k in 0..100 {
        inbox.push(span(k, 1));
    }
    drop(inbox);
}

fn sampler() -> Sampler {
    let spec = CounterSpec {
        joules_per_unit: 1e-6,
        wrap: None,
    };
    let config = Config {
        realtime: false,
        ..Config::default()
    };
    let (s, unavailable) = Sampler::start(vec![package(Some(spec))], config).unwrap();
    assert!(unavailable.is_empty());
    s
}

#[test]
fn marking_threads_finish_while_the_regions_lock_is_held() {
    // The test holds the regions lock (as the sampler thread does while it takes work): a
    // thread entering and leaving regions in every way, and waking the thread after a quiet
    // spell, finishes while the lock is still held. Then every region resolves once.
    let s = Arc::new(sampler());
    let held = lock(&s.shared().regions);
    s.shared().ask_wake(WAKE_QUIET);
    let ticket = s.shared().bell.ticket();
    let (tx, rx) = mpsc::channel();
    let marker = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            let a = s.begin();
            let b = s.begin();
            s.end(b);
            s.end_tagged(a, 7);
            let t0 = crate::now_ns();
            let full = s.end_span(t0, 9);
            let c = s.begin_at(t0);
            s.end_at(c, crate::now_ns());
            // A span longer than a u32 of ns goes through the marks.
            let full_long = s.end_span(t0.saturating_sub(5_000_000_000), 3);
            tx.send((a, b, c, full, full_long)).unwrap();
        })
    };
    let got = rx.recv_timeout(HANG);
    // Still held here: the marker did not wait for it.
    // The first mark found the wake-up asked for and rang the bell (nothing else rings it
    // here: no stop, no drain).
    assert_ne!(
        s.shared().bell.ticket(),
        ticket,
        "the mark did not ring the bell"
    );
    drop(held);
    let (a, b, c, full, full_long) = got.expect("the marking thread waited for the lock");
    assert!(!full && !full_long);
    marker.join().unwrap();
    assert!(s.wait_until_resolved(crate::now_ns(), HANG));
    let done = s.drain();
    let mut ids: Vec<u64> = done.iter().map(|r| r.id).collect();
    ids.sort_unstable();
    // A span (id 0) and four regions with ids (the long span took one).
    assert_eq!(ids.len(), 5, "{ids:?}");
    assert_eq!(ids[0], 0);
    for id in [a, b, c] {
        assert_eq!(
            ids.iter().filter(|&&i| i == id).count(),
            1,
            "{id} in {ids:?}"
        );
    }
    let st = s.stats();
    assert_eq!((st.regions_begun, st.regions_resolved), (5, 5));
}

#[test]
fn several_threads_marking_resolve_every_region_once_and_flush_sees_the_inbox() {
    const THREADS: usize = 4;
    const REGIONS: usize = 500;
    let s = Arc::new(sampler());
    let workers: Vec<_> = (0..THREADS)
        .map(|_| {
            let s = Arc::clone(&s);
            std::thread::spawn(move || {
                let mut ids = Vec::with_capacity(REGIONS);
                for k in 0..REGIONS {
                    let outer = s.begin();
                    let inner = s.begin();
                    let t0 = crate::now_ns();
                    s.end_span(t0, k as u32);
                    s.end(inner);
                    s.end(outer);
                    ids.extend([outer, inner]);
                }
                ids
            })
        })
        .collect();
    let mut ids: Vec<u64> = Vec::new();
    for w in workers {
        ids.extend(w.join().unwrap());
    }
    // Whatever still waits in the inbox (nobody has locked the regions since) counts as
    // pending and is waited for.
    let st = s.stats();
    assert_eq!(st.regions_begun, (THREADS * REGIONS * 3) as u64);
    assert!(s.wait_until_resolved(crate::now_ns(), HANG));
    let done = s.drain();
    assert_eq!(done.len(), THREADS * REGIONS * 3);
    let mut seen: HashMap<u64, usize> = HashMap::new();
    for r in &done {
        assert!(r.t0_ns <= r.t1_ns);
        *seen.entry(r.id).or_default() += 1;
    }
    assert_eq!(seen.remove(&0), Some(THREADS * REGIONS));
    assert_eq!(seen.len(), ids.len());
    assert!(ids.iter().all(|id| seen.get(id) == Some(&1)));
    let st = s.stats();
    assert_eq!(st.regions_resolved, (THREADS * REGIONS * 3) as u64);
    assert_eq!((st.pending_marks, st.undrained), (0, 0));
    assert_eq!(s.shared().done_len.load(Ordering::Relaxed), 0);
}

#[test]
fn slots_are_numbered_across_chunks_of_doubling_size() {
    assert_eq!(place(1), (0, 0));
    assert_eq!(place(64), (0, 63));
    assert_eq!(place(65), (1, 0));
    assert_eq!(place(192), (1, 127));
    assert_eq!(place(193), (2, 0));
    let (c, i) = place(u32::MAX - 1);
    assert!(c < CHUNKS && (i as u64) < FIRST_CHUNK << c);
}

#[test]
fn slots_read_are_reused_and_none_is_handed_out_twice() {
    // 1 000 entries pushed and taken ten times: the slots come back from the spare list (no
    // more are made than were waiting at once), and every entry reads back as pushed.
    let inbox = Inbox::default();
    for round in 0..10u64 {
        for k in 0..1_000u64 {
            inbox.push(mark(round * 1_000 + k, k, Edge::Enter));
        }
        let ids = mark_ids(&inbox);
        assert_eq!(
            ids,
            (round * 1_000..(round + 1) * 1_000).collect::<Vec<_>>()
        );
    }
    assert_eq!(inbox.made.load(Ordering::Relaxed), 1_000);
}

#[test]
fn slot_numbers_are_refused_at_the_cap_never_wrapped() {
    // Every slot number handed out (the count at its cap) and one slot holding an entry: each
    // push after that is refused, however many try. A count that wrapped would hand out slot
    // 1 again, still in the inbox: its entry overwritten, and a chain that links it to itself
    // (a reader that never finishes).
    let inbox = Inbox::default();
    inbox.push(mark(1, 1, Edge::Enter));
    inbox.made.store(MAX_SLOTS, Ordering::Relaxed);
    for _ in 0..3 {
        let pushed = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            inbox.push(mark(2, 2, Edge::Exit));
        }));
        assert!(pushed.is_err(), "a push past the cap was taken");
    }
    assert_eq!(inbox.made.load(Ordering::Relaxed), MAX_SLOTS);
    let ids = mark_ids(&inbox);
    assert_eq!(ids, vec![1]);
}

/// Waits (bounded by [`HANG`]) until the thread has gone quiet and asked the next mark to
/// wake it (it then sleeps until its counter's next read, an hour away, unless rung); returns
/// the count of its loops by then.
fn until_quiet(s: &Sampler) -> u64 {
    let t = std::time::Instant::now();
    while !s.shared().wake_asked(WAKE_QUIET) {
        assert!(t.elapsed() < HANG, "the thread never went quiet");
        std::thread::sleep(Duration::from_millis(2));
    }
    s.shared().loops.load(Ordering::SeqCst)
}

#[test]
fn a_thread_asleep_for_an_hour_wakes_at_the_first_mark_and_at_stop() {
    // A counter read once an hour (not phase-locked: never read more often), quiet as soon as
    // no mark comes: only the bell ends the thread's sleep before HANG.
    let spec = CounterSpec {
        joules_per_unit: 1e-6,
        wrap: None,
    };
    let config = Config {
        realtime: false,
        phase_lock: false,
        mark_reads: false,
        predict_marks: false,
        intervals: vec![("powercap".into(), Duration::from_secs(3600))],
        fast_hold: Duration::ZERO,
        ..Config::default()
    };
    let (s, _) = Sampler::start(vec![package(Some(spec))], config).unwrap();
    let s = Arc::new(s);
    for round in 0..3u32 {
        let loops = until_quiet(&s);
        // A region marked now: its mark rings, and the thread loops again (reads every
        // counter, and goes quiet again).
        if round % 2 == 0 {
            s.end_span(crate::now_ns(), round);
        } else {
            let id = s.begin();
            s.end(id);
        }
        let t = std::time::Instant::now();
        while s.shared().loops.load(Ordering::SeqCst) == loops {
            assert!(
                t.elapsed() < HANG,
                "round {round}: the mark did not wake the quiet thread"
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }
    until_quiet(&s);
    let (tx, rx) = mpsc::channel();
    let stopper = {
        let s = Arc::clone(&s);
        std::thread::spawn(move || {
            s.stop();
            tx.send(()).unwrap();
        })
    };
    rx.recv_timeout(HANG)
        .expect("stop did not wake the quiet thread");
    stopper.join().unwrap();
    assert!(!s.is_running());
    // Stopping resolves every region marked.
    assert_eq!(s.drain().len(), 3);
}

/// In a child forked while other threads push and take: push `n` marks (id `u64::MAX`, taken
/// from spare slots: no allocation), take everything, and say whether the last `n` taken are
/// those, in order. Makes no allocation and takes no lock.
fn child_pushes_and_takes(inbox: &Inbox, n: u64) -> bool {
    for k in 0..n {
        inbox.push(mark(u64::MAX, k, Edge::Enter));
    }
    // The child's marks come last: whatever the parent's threads had pushed comes before them.
    let mut tail = 0;
    for e in inbox.take() {
        match e {
            Entry::Mark(m) if m.id == u64::MAX && m.t_ns == tail => tail += 1,
            _ => tail = 0,
        }
    }
    tail == n
}

#[test]
fn a_child_forked_mid_push_and_mid_take_finds_the_inbox_whole() {
    // Every instant of the inbox is a state it can go on from (a push is in or not, a take has
    // the chain or not): a fork at any instant leaves the child an inbox it can push to and
    // take from, at worst short of the slots the parent's threads held.
    let inbox = Arc::new(Inbox::default());
    // Spare slots enough for the child (pushers hold at most one each, the reader a chain).
    for k in 0..20_000 {
        inbox.push(mark(k, k, Edge::Enter));
    }
    drop(inbox.take());
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut threads = Vec::new();
    for p in 0..3u64 {
        let (inbox, stop) = (Arc::clone(&inbox), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            let mut k = 0;
            while !stop.load(Ordering::Relaxed) {
                inbox.push(mark(p, k, Edge::Enter));
                k += 1;
            }
        }));
    }
    {
        let (inbox, stop) = (Arc::clone(&inbox), Arc::clone(&stop));
        threads.push(std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for _ in inbox.take() {}
            }
        }));
    }
    let mut failed = Vec::new();
    for round in 0..20 {
        std::thread::sleep(Duration::from_millis(1));
        // SAFETY: the child touches only the inbox (atomics, and memory it owns) and _exit.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let ok = child_pushes_and_takes(&inbox, 1_000);
            // SAFETY: the child never returns into the test harness.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        assert!(child > 0);
        let t = std::time::Instant::now();
        let mut status = 0;
        loop {
            // SAFETY: our own child, a local for its status.
            let done = unsafe { libc::waitpid(child, &mut status, libc::WNOHANG) };
            if done == child {
                break;
            }
            if t.elapsed() > HANG {
                // SAFETY: our own child, not yet waited for.
                unsafe {
                    libc::kill(child, libc::SIGKILL);
                    libc::waitpid(child, &mut status, 0);
                }
                failed.push((round, "hung"));
                break;
            }
            std::thread::sleep(Duration::from_millis(1));
        }
        if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0)
            && failed.last().map(|f| f.0) != Some(round)
        {
            failed.push((round, "lost or misordered its marks"));
        }
    }
    stop.store(true, Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    assert!(failed.is_empty(), "{failed:?}");
}
