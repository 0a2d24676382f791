//! The queue in front of the single writer: cells' writes (leases, instances) go before the
//! external API's, and a waiter whose request was dropped (its client went away) leaves the
//! queue without running.
use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use tokio::sync::oneshot;

/// Which queue a write waits in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Priority {
    /// The internal API: cells registering containers, acquiring and renewing leases.
    Cell,
    /// Everything else (the external API, start-up, tokens).
    Normal,
}

#[derive(Default)]
struct Queues {
    busy: bool,
    cell: VecDeque<oneshot::Sender<()>>,
    normal: VecDeque<oneshot::Sender<()>>,
}

/// One writer at a time; the next is the oldest waiting cell write, else the oldest other write.
#[derive(Clone, Default)]
pub struct WriteGate {
    q: Arc<Mutex<Queues>>,
}

/// The right to write; the next waiter gets it when this is dropped.
pub struct Permit {
    gate: WriteGate,
}

impl Drop for Permit {
    fn drop(&mut self) {
        self.gate.release();
    }
}

/// A place in a queue. Dropped after the permit was handed over but before it was taken (the
/// request was cancelled at that moment), it passes the permit on.
struct Waiting {
    rx: oneshot::Receiver<()>,
    gate: WriteGate,
    taken: bool,
}

impl Drop for Waiting {
    fn drop(&mut self) {
        if self.taken {
            return;
        }
        self.rx.close();
        if self.rx.try_recv().is_ok() {
            self.gate.release();
        }
    }
}

impl WriteGate {
    fn lock(&self) -> std::sync::MutexGuard<'_, Queues> {
        self.q.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Waits for the writer. Cancel-safe: dropping the future gives up the place (or the
    /// permit, if it had just been handed over).
    pub async fn acquire(&self, priority: Priority) -> Permit {
        let rx = {
            let mut q = self.lock();
            if !q.busy {
                q.busy = true;
                return Permit { gate: self.clone() };
            }
            let (tx, rx) = oneshot::channel();
            match priority {
                Priority::Cell => q.cell.push_back(tx),
                Priority::Normal => q.normal.push_back(tx),
            }
            rx
        };
        let mut w = Waiting {
            rx,
            gate: self.clone(),
            taken: false,
        };
        // The sender is only dropped after a successful send (see `release`).
        let _ = (&mut w.rx).await;
        w.taken = true;
        Permit { gate: self.clone() }
    }

    /// Hands the writer to the next live waiter, or marks it free.
    fn release(&self) {
        let mut q = self.lock();
        while let Some(tx) = q.cell.pop_front().or_else(|| q.normal.pop_front()) {
            if tx.send(()).is_ok() {
                return;
            }
            // That waiter was cancelled: try the next.
        }
        q.busy = false;
    }

    /// Writes waiting (cell, normal); for tests.
    #[cfg(test)]
    fn waiting(&self) -> (usize, usize) {
        let q = self.lock();
        (q.cell.len(), q.normal.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn cell_writes_go_first_and_cancelled_waiters_leave() {
        let gate = WriteGate::default();
        let first = gate.acquire(Priority::Normal).await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (name, p) in [
            ("n1", Priority::Normal),
            ("gone", Priority::Normal),
            ("n2", Priority::Normal),
            ("c1", Priority::Cell),
        ] {
            let g = gate.clone();
            let order = order.clone();
            tasks.push(tokio::spawn(async move {
                let _permit = g.acquire(p).await;
                order.lock().unwrap().push(name);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }));
            // Queue them in this order.
            while gate.waiting().0 + gate.waiting().1 < tasks.len() {
                tokio::task::yield_now().await;
            }
        }
        // The client of "gone" disconnects while it waits.
        tasks.remove(1).abort();
        drop(first);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), vec!["c1", "n1", "n2"]);
        // The gate is free again.
        drop(gate.acquire(Priority::Normal).await);
    }

    #[tokio::test]
    async fn a_permit_handed_to_a_waiter_dropped_at_that_moment_is_passed_on() {
        let gate = WriteGate::default();
        let first = gate.acquire(Priority::Normal).await;
        let mut waiter = Box::pin(gate.acquire(Priority::Cell));
        // Poll once so it queues.
        assert!(futures::poll!(waiter.as_mut()).is_pending());
        drop(first); // hands the permit to `waiter`...
        drop(waiter); // ...which is dropped before taking it.
        let next =
            tokio::time::timeout(Duration::from_secs(5), gate.acquire(Priority::Normal)).await;
        assert!(next.is_ok(), "the permit was lost");
    }
}
