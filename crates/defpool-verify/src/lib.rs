//! Share verification off the async threads.
//!
//! A sha256d check costs about a microsecond and runs inline. A scrypt check costs tens of
//! microseconds of memory-hard work: run on an executor thread it would stall every connection
//! that thread serves, so it goes to tokio's blocking pool, with a semaphore bounding how many run
//! at once (a share flood queues instead of spawning threads without limit).

use std::sync::Arc;

use defpool_core::share::{CheckedShare, PreparedShare};
use tokio::sync::Semaphore;

/// Why a share could not be verified (never a judgement on the share itself).
#[derive(Debug, thiserror::Error)]
pub enum VerifyError {
    #[error("the verifier is shutting down")]
    Closed,
    #[error("a share check panicked: {0}")]
    Panicked(String),
}

/// Verifies prepared shares on the right threads. Cheap to clone.
#[derive(Clone)]
pub struct ShareVerifier {
    expensive: Arc<Semaphore>,
}

impl ShareVerifier {
    /// `max_parallel_expensive`: scrypt checks allowed at once (about the number of cores).
    pub fn new(max_parallel_expensive: usize) -> ShareVerifier {
        ShareVerifier {
            expensive: Arc::new(Semaphore::new(max_parallel_expensive.max(1))),
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
        let permit = self
            .expensive
            .clone()
            .acquire_owned()
            .await
            .map_err(|_| VerifyError::Closed)?;
        tokio::task::spawn_blocking(move || {
            let _permit = permit;
            prepared.judge()
        })
        .await
        .map_err(|e| VerifyError::Panicked(e.to_string()))
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
