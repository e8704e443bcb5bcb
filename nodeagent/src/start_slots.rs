//! How many pods the agent brings up at once.
//!
//! A pod's first start — sandbox, network, volumes, containers — takes one of a fixed
//! number of slots, first come first served, and gives it back once its containers
//! run (before its status is written), or as soon as it would wait on something slow:
//! a pull that asks the registry (`imagePullPolicy: Always`, or an image not on the
//! node yet) or a postStart hook. Bringing up a pod is CPU work, so a burst of pods
//! bound at once comes up in order, one after another per slot, instead of every pod
//! sharing the CPUs and all of them becoming Running together at the end: the same
//! throughput, with the first pods Running long before the last.
//! The default is one slot per CPU. While pods wait for a slot or hold one, the
//! agent's events wait too ([`rkube_client::events::EventRecorder::busy`]).

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// The agent's start slots, shared by its pod workers.
#[derive(Debug, Clone)]
pub struct StartSlots {
    slots: Arc<Semaphore>,
    count: usize,
}

/// A taken slot; dropping it gives it back.
#[derive(Debug)]
pub struct Slot(#[allow(dead_code)] OwnedSemaphorePermit);

impl StartSlots {
    /// `count` slots (at least one).
    pub fn new(count: usize) -> Self {
        let count = count.max(1);
        StartSlots {
            slots: Arc::new(Semaphore::new(count)),
            count,
        }
    }

    /// One slot per CPU of this machine.
    pub fn per_cpu() -> Self {
        StartSlots::new(std::thread::available_parallelism().map_or(1, |n| n.get()))
    }

    /// How many slots there are.
    pub fn count(&self) -> usize {
        self.count
    }

    /// Waits for a free slot, in the order callers asked.
    pub async fn take(&self) -> Slot {
        let permit = self
            .slots
            .clone()
            .acquire_owned()
            .await
            .expect("the semaphore is never closed");
        Slot(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn slots_go_in_the_order_asked_and_come_back_when_dropped() {
        let slots = StartSlots::new(1);
        let first = slots.take().await;
        let order = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let mut waiting = Vec::new();
        for n in 0..3 {
            let slots = slots.clone();
            let order = order.clone();
            waiting.push(tokio::spawn(async move {
                let _slot = slots.take().await;
                order.lock().push(n);
            }));
            // Each asks before the next.
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        assert!(
            order.lock().is_empty(),
            "nobody runs while the slot is taken"
        );
        drop(first);
        for task in waiting {
            task.await.expect("task");
        }
        assert_eq!(*order.lock(), vec![0, 1, 2]);
        assert_eq!(StartSlots::new(0).count(), 1);
    }
}
