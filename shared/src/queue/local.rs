//! The in-process queue of `chat-router serve`: what SQS FIFO does on AWS, in memory.
//!
//! Jobs are grouped by [`Job::group`]: a conversation's routing jobs, or its
//! deliveries. A group's jobs run one at a time in job-id order
//! (the order they were stored), and different groups run in parallel on a fixed set
//! of worker tasks. A job whose handler fails blocks its group until a retry succeeds,
//! as a failed message blocks its message group on a FIFO queue; retries back off
//! exponentially. A job already queued is not queued twice, so the sweeper may hand
//! over everything it finds pending without doubling work in flight.
//!
//! The queue lives in memory: jobs queued when the process stops are still pending in
//! the database, and the sweeper hands them over again on the next start.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::mpsc;

use super::{JobHandler, JobQueue, QueueError};
use crate::ingest::Job;

/// First retry delay after a failure; doubled for each further failure of the job.
const FIRST_RETRY: Duration = Duration::from_millis(50);

/// Longest retry delay.
const MAX_RETRY: Duration = Duration::from_secs(5);

/// An in-process FIFO queue with one ordering group per conversation.
#[derive(Clone)]
pub struct LocalQueue {
    shared: Arc<Shared>,
}

struct Shared {
    state: Mutex<State>,
    /// Groups ready for a worker.
    ready: mpsc::UnboundedSender<String>,
    /// Set when the queue stops taking work.
    stop: tokio::sync::watch::Sender<bool>,
}

#[derive(Default)]
struct State {
    groups: HashMap<String, Group>,
    /// Ids of every job queued and not yet finished.
    queued: HashSet<i64>,
    /// Jobs handled to completion, for reports.
    finished: u64,
}

#[derive(Default)]
struct Group {
    jobs: BTreeMap<i64, Job>,
    /// Ready, running or waiting for a retry: a worker will get to it.
    scheduled: bool,
    /// Failures of the group's first job in a row.
    failures: u32,
}

impl LocalQueue {
    /// Starts `workers` worker tasks that hand jobs to `handler`.
    pub fn start(handler: Arc<dyn JobHandler>, workers: usize) -> LocalQueue {
        let (ready, receiver) = mpsc::unbounded_channel();
        let (stop, _) = tokio::sync::watch::channel(false);
        let shared = Arc::new(Shared {
            state: Mutex::new(State::default()),
            ready,
            stop,
        });
        let receiver = Arc::new(tokio::sync::Mutex::new(receiver));
        for _ in 0..workers.max(1) {
            tokio::spawn(work(shared.clone(), receiver.clone(), handler.clone()));
        }
        LocalQueue { shared }
    }

    /// Jobs queued and not yet finished.
    pub fn len(&self) -> usize {
        self.shared.state.lock().expect("queue lock").queued.len()
    }

    /// Whether every queued job has finished.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Jobs handled to completion since the queue started.
    pub fn finished(&self) -> u64 {
        self.shared.state.lock().expect("queue lock").finished
    }

    /// Stops the workers once their current job is handled. Jobs still queued stay
    /// pending in the database.
    pub fn shutdown(&self) {
        self.shared.stop.send_replace(true);
    }
}

#[async_trait]
impl JobQueue for LocalQueue {
    async fn enqueue(&self, job: &Job) -> Result<(), QueueError> {
        if *self.shared.stop.borrow() {
            return Err(QueueError("the local queue has stopped".into()));
        }
        let mut state = self.shared.state.lock().expect("queue lock");
        if !state.queued.insert(job.id) {
            return Ok(());
        }
        let group_id = job.group();
        let group = state.groups.entry(group_id.clone()).or_default();
        group.jobs.insert(job.id, job.clone());
        if !group.scheduled {
            group.scheduled = true;
            // Fails only once every worker is gone, when nothing runs anyway.
            let _ = self.shared.ready.send(group_id);
        }
        Ok(())
    }
}

async fn work(
    shared: Arc<Shared>,
    receiver: Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<String>>>,
    handler: Arc<dyn JobHandler>,
) {
    let mut stop = shared.stop.subscribe();
    loop {
        let group = {
            let mut receiver = receiver.lock().await;
            tokio::select! {
                group = receiver.recv() => group,
                _ = stop.wait_for(|stopped| *stopped) => None,
            }
        };
        let Some(group) = group else { return };
        run_group(&shared, &handler, group).await;
    }
}

/// Runs a group's jobs in order until it is empty or one fails; a failed job is
/// retried after the delay its handler asked for, else after [`retry_delay`].
async fn run_group(shared: &Arc<Shared>, handler: &Arc<dyn JobHandler>, group_id: String) {
    loop {
        if *shared.stop.borrow() {
            return;
        }
        let job = {
            let mut state = shared.state.lock().expect("queue lock");
            let Some(group) = state.groups.get_mut(&group_id) else {
                return;
            };
            match group.jobs.first_key_value() {
                Some((_, job)) => job.clone(),
                None => {
                    state.groups.remove(&group_id);
                    return;
                }
            }
        };
        let result = handler.handle(&job).await;
        let mut state = shared.state.lock().expect("queue lock");
        match result {
            Ok(()) => {
                state.queued.remove(&job.id);
                state.finished += 1;
                let group = state
                    .groups
                    .get_mut(&group_id)
                    .expect("a running group stays");
                group.jobs.remove(&job.id);
                group.failures = 0;
                if group.jobs.is_empty() {
                    state.groups.remove(&group_id);
                    return;
                }
            }
            Err(err) => {
                let group = state
                    .groups
                    .get_mut(&group_id)
                    .expect("a running group stays");
                group.failures += 1;
                let delay = err
                    .retry_after
                    .unwrap_or_else(|| retry_delay(group.failures));
                tracing::warn!(
                    job = job.id,
                    kind = job.kind.as_str(),
                    conversation = %job.conversation_id,
                    failures = group.failures,
                    retry_ms = delay.as_millis() as u64,
                    cause = %err,
                    "job failed; retrying"
                );
                let ready = shared.ready.clone();
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = ready.send(group_id);
                });
                return;
            }
        }
    }
}

/// Exponential backoff with full jitter, so retries of many groups spread out.
fn retry_delay(failures: u32) -> Duration {
    let ceiling = FIRST_RETRY
        .saturating_mul(1u32 << failures.saturating_sub(1).min(16))
        .min(MAX_RETRY);
    let millis = ceiling.as_millis().max(1) as u64;
    Duration::from_millis(rand::random_range(millis / 2..=millis))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_delays_grow_and_stay_bounded() {
        assert!(retry_delay(1) <= FIRST_RETRY);
        assert!(retry_delay(3) >= FIRST_RETRY * 2);
        for failures in [10, 31, 1000] {
            let delay = retry_delay(failures);
            assert!(delay <= MAX_RETRY && delay >= MAX_RETRY / 2, "{delay:?}");
        }
    }
}
