//! The bell: how a marking thread (and `stop`, and a drain that made room) wakes the sleeping
//! sampler thread without a lock (a condition variable's mutex is one the sampler thread holds
//! around its checks and on waking, where it can be descheduled).
//!
//! A counter the sleeper waits on with a futex. The sleeper reads the counter *before* it
//! checks why it might not sleep (its flags: the next mark's wake-up, stop), then sleeps only
//! while the counter still holds what it read; a waker sets its flag, then bumps the counter
//! and wakes. Either the sleeper's check sees the flag (it does not sleep), or the check came
//! first, so the bump comes after the read and the kernel's compare (ordered after the check)
//! either sees it (no sleep) or the sleeper is queued before the wake looks (woken): no wake-up
//! is lost. A ring while the thread is awake costs it at most one early return from its next
//! sleep, which its loop treats as any wake-up.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

#[derive(Default)]
pub(super) struct Bell {
    rung: AtomicU32,
}

impl Bell {
    /// What to pass to [`Bell::sleep`]: read before checking the reasons not to sleep.
    pub(super) fn ticket(&self) -> u32 {
        self.rung.load(Ordering::SeqCst)
    }

    /// Sleep until rung after `ticket` was taken, or `timeout` passes (or a signal: callers
    /// look again at what woke them in any case).
    pub(super) fn sleep(&self, ticket: u32, timeout: Duration) {
        let ts = libc::timespec {
            tv_sec: libc::time_t::try_from(timeout.as_secs()).unwrap_or(libc::time_t::MAX),
            // Below 10⁹: fits a c_long of any width.
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: the futex word is a live, aligned u32 for the call's duration; FUTEX_WAIT
        // takes a relative timeout and returns at once when the word no longer holds `ticket`.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.rung.as_ptr(),
                libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG,
                ticket,
                &ts as *const libc::timespec,
            );
        }
    }

    /// Wake the sleeper (after setting what it is to see). Takes no lock.
    pub(super) fn ring(&self) {
        self.rung.fetch_add(1, Ordering::SeqCst);
        // SAFETY: as in `sleep`; FUTEX_WAKE only reads the address.
        unsafe {
            libc::syscall(
                libc::SYS_futex,
                self.rung.as_ptr(),
                libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG,
                i32::MAX,
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn a_ring_before_the_sleep_is_not_lost() {
        // Rung between the ticket and the sleep: the sleep returns at once (an hour's
        // timeout would hang the test otherwise).
        let b = Bell::default();
        let t = b.ticket();
        b.ring();
        b.sleep(t, Duration::from_secs(3600));
    }

    #[test]
    fn a_ring_wakes_a_sleeper() {
        let b = Arc::new(Bell::default());
        let (tx, rx) = std::sync::mpsc::channel();
        let sleeper = {
            let b = Arc::clone(&b);
            std::thread::spawn(move || {
                let t = b.ticket();
                tx.send(()).unwrap();
                b.sleep(t, Duration::from_secs(3600));
            })
        };
        rx.recv().unwrap();
        b.ring();
        sleeper.join().unwrap();
    }
}
