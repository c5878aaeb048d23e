//! Share verification off the async threads.
//!
//! A sha256d check costs about a microsecond and runs inline. A scrypt check costs hundreds of
//! microseconds of memory-hard work: run on an executor thread it would stall every connection
//! that thread serves, so it goes to a small fixed pool of verifier threads (one per core, started
//! on the first scrypt check) fed by one queue. A flood queues instead of spawning threads; a
//! worker takes the next share without sleeping while the queue is not empty, and a sleeping
//! worker is woken only when one is needed (tokio's blocking pool, one task per share, spent about
//! a fifth of the proxy's CPU on the hand-off).

use std::collections::VecDeque;
use std::sync::{Arc, Condvar, Mutex, OnceLock};

use defpool_core::share::{CheckedShare, PreparedShare};
use tokio::sync::oneshot;

/// Why a share could not be verified (never a judgement on the share itself).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the verifier is shutting down")]
    Closed,
    #[error("a share check panicked: {0}")]
    Panicked(String),
    #[error("could not start a verifier thread: {0}")]
    Spawn(String),
}

type Task = (PreparedShare, oneshot::Sender<Result<CheckedShare, String>>);

#[derive(Default)]
struct State {
    tasks: VecDeque<Task>,
    /// Workers waiting for a task.
    idle: usize,
    closed: bool,
}

#[derive(Default)]
struct Queue {
    state: Mutex<State>,
    ready: Condvar,
}

impl Queue {
    fn work(&self) {
        loop {
            let (prepared, done) = {
                let mut st = self.state.lock().expect("verifier queue lock");
                loop {
                    if let Some(task) = st.tasks.pop_front() {
                        break task;
                    }
                    if st.closed {
                        return;
                    }
                    st.idle += 1;
                    st = self.ready.wait(st).expect("verifier queue lock");
                    st.idle -= 1;
                }
            };
            let result =
                std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| prepared.judge()))
                    .map_err(|p| {
                        p.downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "unknown panic".into())
                    });
            // The asking session may be gone; its answer is then simply dropped.
            let _ = done.send(result);
        }
    }
}

/// Owns the pool: dropping the last verifier handle lets its threads finish the queue and exit.
struct Pool {
    queue: Arc<Queue>,
    threads: usize,
    started: OnceLock<Result<(), String>>,
}

impl Pool {
    fn start(&self) -> Result<(), VerifyError> {
        self.started
            .get_or_init(|| {
                for i in 0..self.threads {
                    let queue = self.queue.clone();
                    std::thread::Builder::new()
                        .name(format!("share-verify-{i}"))
                        .spawn(move || queue.work())
                        .map_err(|e| e.to_string())?;
                }
                Ok(())
            })
            .clone()
            .map_err(VerifyError::Spawn)
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        if let Ok(mut st) = self.queue.state.lock() {
            st.closed = true;
        }
        self.queue.ready.notify_all();
    }
}

/// Verifies prepared shares on the right threads. Cheap to clone.
#[derive(Clone)]
pub struct ShareVerifier {
    pool: Arc<Pool>,
}

impl ShareVerifier {
    /// `max_parallel_expensive`: scrypt checks run at once, each on its own thread (about the
    /// number of cores).
    pub fn new(max_parallel_expensive: usize) -> ShareVerifier {
        ShareVerifier {
            pool: Arc::new(Pool {
                queue: Arc::new(Queue::default()),
                threads: max_parallel_expensive.max(1),
                started: OnceLock::new(),
            }),
        }
    }

    /// One per available core.
    pub fn per_core() -> ShareVerifier {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        ShareVerifier::new(cores)
    }

    /// Hash and classify a prepared share.
    pub async fn judge(&self, prepared: PreparedShare) -> Result<CheckedShare, VerifyError> {
        if !prepared.algorithm.is_expensive() {
            return Ok(prepared.judge());
        }
        self.pool.start()?;
        let (done, answer) = oneshot::channel();
        {
            let queue = &self.pool.queue;
            let mut st = queue.state.lock().expect("verifier queue lock");
            st.tasks.push_back((prepared, done));
            // Wake a worker only if none is awake to take it: busy workers come back for it.
            let wake = st.idle > 0 && st.tasks.len() <= self.pool.threads;
            drop(st);
            if wake {
                queue.ready.notify_one();
            }
        }
        match answer.await {
            Ok(Ok(checked)) => Ok(checked),
            Ok(Err(panic)) => Err(VerifyError::Panicked(panic)),
            Err(_) => Err(VerifyError::Closed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use defpool_core::share::{Job, ShareClass, Submission, SubmittedVersion};
    use defpool_core::{Algorithm, CompactTarget};
    use std::time::Duration;

    fn job(algorithm: Algorithm) -> Job {
        let easy = CompactTarget(0x207fffff).to_target().unwrap();
        Job {
            id: 1,
            algorithm,
            version: 0x2000_0000,
            version_mask: 0x1fff_e000,
            prev_hash: [3; 32],
            coinbase_prefix: vec![1; 40],
            coinbase_suffix: vec![2; 60],
            extranonce_size: 8,
            merkle_branch: vec![[5; 32]; 10],
            nbits: 0x207fffff,
            ntime: 1_700_000_000,
            share_target: easy,
            block_target: easy,
        }
    }

    fn sub(nonce: u32) -> Submission<'static> {
        Submission {
            extranonce: &[7; 8],
            ntime: 1_700_000_000,
            nonce,
            version: SubmittedVersion::Unrolled,
        }
    }

    #[tokio::test]
    async fn results_match_inline_validation_for_both_algorithms() {
        let verifier = ShareVerifier::new(2);
        for algorithm in Algorithm::ALL {
            let j = job(algorithm);
            for nonce in 0..20 {
                let prepared = j.prepare(&sub(nonce), 1_700_000_000).unwrap();
                let inline = prepared.judge();
                assert_eq!(verifier.judge(prepared).await.unwrap(), inline);
            }
        }
    }

    /// Many sessions at once (more than threads) all get their own answers.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn concurrent_checks_get_their_own_answers() {
        let verifier = ShareVerifier::new(2);
        let j = Arc::new(job(Algorithm::Scrypt));
        let mut tasks = Vec::new();
        for nonce in 0..64 {
            let (v, j) = (verifier.clone(), j.clone());
            tasks.push(tokio::spawn(async move {
                let prepared = j.prepare(&sub(nonce), 1_700_000_000).unwrap();
                let inline = prepared.judge();
                (v.judge(prepared).await.unwrap(), inline)
            }));
        }
        for t in tasks {
            let (pooled, inline) = t.await.unwrap();
            assert_eq!(pooled, inline);
        }
    }

    /// While scrypt checks run, a single-threaded executor keeps serving other tasks: the ticker
    /// below advances before the batch of checks is done. Inline scrypt would starve it.
    #[tokio::test(flavor = "current_thread")]
    async fn scrypt_checks_leave_the_executor_free() {
        let verifier = ShareVerifier::new(1);
        let j = job(Algorithm::Scrypt);
        let ticks = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let counter = ticks.clone();
        let ticker = tokio::spawn(async move {
            loop {
                counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        });
        let mut classes = Vec::new();
        for nonce in 0..300 {
            let prepared = j.prepare(&sub(nonce), 1_700_000_000).unwrap();
            classes.push(verifier.judge(prepared).await.unwrap().class);
        }
        ticker.abort();
        assert!(ticks.load(std::sync::atomic::Ordering::Relaxed) > 1);
        assert!(classes.contains(&ShareClass::BlockCandidate));
    }
}
