//! Share validation: from a job and a miner's submission to a classified, hashed share.
//!
//! Validation is split in two so that expensive hashing can run off async threads:
//! [`Job::prepare`] does every cheap check and builds the header; [`PreparedShare::judge`]
//! hashes it and classifies the result. [`JobBook`] keeps the jobs of one channel and rejects
//! unknown, stale and duplicate submissions.

use std::collections::HashSet;
use std::sync::Arc;

use crate::coin::Algorithm;
use crate::hash::{pow_hash, sha256d, Hash32};
use crate::header::Header;
use crate::merkle::fold_branch;
use crate::work::Target;

/// Largest extranonce DefPool handles (coinbase space between prefix and suffix).
pub const MAX_EXTRANONCE: usize = 32;

/// How far ahead of the validating clock a share's nTime may be: the consensus limit of the
/// built-in coins (two hours).
pub const MAX_NTIME_FUTURE_SECS: u32 = 7_200;

/// One unit of work handed to miners, with the targets in force when it was sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Job {
    pub id: u64,
    pub algorithm: Algorithm,
    pub version: u32,
    /// Version bits the miner may roll for this job (coin mask ∩ negotiated mask).
    pub version_mask: u32,
    pub prev_hash: Hash32,
    /// Coinbase bytes before the extranonce (non-witness serialization).
    pub coinbase_prefix: Vec<u8>,
    /// Coinbase bytes after the extranonce.
    pub coinbase_suffix: Vec<u8>,
    /// Exact extranonce length the coinbase expects.
    pub extranonce_size: usize,
    pub merkle_branch: Vec<Hash32>,
    pub nbits: u32,
    /// The job's nTime: the earliest a share may carry.
    pub ntime: u32,
    /// The share target when the job was sent: shares are judged and credited against it.
    pub share_target: Target,
    /// The target a hash must meet to be submitted as a block (the network target, or a stricter
    /// regtest `block_target`).
    pub block_target: Target,
}

/// The version field of a submission in either convention.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SubmittedVersion {
    /// The miner does not roll versions.
    Unrolled,
    /// The full header version (SV2 submissions).
    Full(u32),
    /// Only the rolled bits (SV1 `mining.submit` with BIP310).
    RolledBits(u32),
}

/// What a miner sends for a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Submission<'a> {
    /// The whole extranonce: the channel's prefix followed by the miner's own part.
    pub extranonce: &'a [u8],
    pub ntime: u32,
    pub nonce: u32,
    pub version: SubmittedVersion,
}

/// Why a submission is refused before or instead of crediting it.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Reject {
    #[error("unknown job {0}")]
    UnknownJob(u64),
    #[error("stale job {0}")]
    StaleJob(u64),
    #[error("duplicate share")]
    Duplicate,
    #[error("ntime {ntime} outside {min}..={max}")]
    NtimeOutOfRange { ntime: u32, min: u32, max: u32 },
    #[error("version bits {bits:#010x} outside mask {mask:#010x}")]
    VersionBitsOutsideMask { bits: u32, mask: u32 },
    #[error("extranonce is {got} bytes, expected {expected}")]
    BadExtranonceSize { expected: usize, got: usize },
}

impl Reject {
    /// A stable short code, used in protocol errors, logs and statistics.
    pub fn code(&self) -> &'static str {
        match self {
            Reject::UnknownJob(_) => "invalid-job-id",
            Reject::StaleJob(_) => "stale-share",
            Reject::Duplicate => "duplicate-share",
            Reject::NtimeOutOfRange { .. } => "ntime-out-of-range",
            Reject::VersionBitsOutsideMask { .. } => "invalid-version-bits",
            Reject::BadExtranonceSize { .. } => "bad-extranonce-size",
        }
    }
}

/// How a hashed share stands against its targets.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShareClass {
    /// The hash misses the share target: no credit.
    BelowTarget,
    /// A valid share: credited the work of the share target.
    Share,
    /// Also meets the block target: submit the block.
    BlockCandidate,
}

/// A share whose cheap checks passed, waiting to be hashed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedShare {
    pub algorithm: Algorithm,
    pub header: Header,
    pub share_target: Target,
    pub block_target: Target,
}

/// A hashed, classified share.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckedShare {
    pub class: ShareClass,
    pub header: Header,
    /// Proof-of-work hash, internal byte order.
    pub pow_hash: Hash32,
    /// Work credited: the share target's work for valid shares, zero below target.
    pub work: u128,
}

impl Job {
    /// The coinbase transaction (non-witness serialization) for an extranonce.
    pub fn coinbase(&self, extranonce: &[u8]) -> Vec<u8> {
        let mut tx = Vec::with_capacity(
            self.coinbase_prefix.len() + extranonce.len() + self.coinbase_suffix.len(),
        );
        tx.extend_from_slice(&self.coinbase_prefix);
        tx.extend_from_slice(extranonce);
        tx.extend_from_slice(&self.coinbase_suffix);
        tx
    }

    /// The merkle root for an extranonce.
    pub fn merkle_root(&self, extranonce: &[u8]) -> Hash32 {
        fold_branch(sha256d(&self.coinbase(extranonce)), &self.merkle_branch)
    }

    /// The header version a submission asks for, refused if it rolls bits outside the mask.
    pub fn rolled_version(&self, version: SubmittedVersion) -> Result<u32, Reject> {
        let outside = |bits: u32| Reject::VersionBitsOutsideMask {
            bits,
            mask: self.version_mask,
        };
        match version {
            SubmittedVersion::Unrolled => Ok(self.version),
            SubmittedVersion::Full(v) => {
                let changed = v ^ self.version;
                if changed & !self.version_mask != 0 {
                    Err(outside(changed))
                } else {
                    Ok(v)
                }
            }
            SubmittedVersion::RolledBits(bits) => {
                if bits & !self.version_mask != 0 {
                    Err(outside(bits))
                } else {
                    Ok((self.version & !self.version_mask) | bits)
                }
            }
        }
    }

    /// Every check that needs no hashing of the header, then the header itself. `now` is the
    /// validating clock in Unix seconds.
    pub fn prepare(&self, sub: &Submission<'_>, now: u32) -> Result<PreparedShare, Reject> {
        let version = self.check(sub, now)?;
        Ok(self.build(sub, version))
    }

    /// The checks that cost no hashing; the header version on success.
    fn check(&self, sub: &Submission<'_>, now: u32) -> Result<u32, Reject> {
        if sub.extranonce.len() != self.extranonce_size {
            return Err(Reject::BadExtranonceSize {
                expected: self.extranonce_size,
                got: sub.extranonce.len(),
            });
        }
        let max = now.max(self.ntime).saturating_add(MAX_NTIME_FUTURE_SECS);
        if sub.ntime < self.ntime || sub.ntime > max {
            return Err(Reject::NtimeOutOfRange {
                ntime: sub.ntime,
                min: self.ntime,
                max,
            });
        }
        self.rolled_version(sub.version)
    }

    /// The header of a checked submission: coinbase hash and merkle fold (the costly part of a
    /// sha256d check).
    fn build(&self, sub: &Submission<'_>, version: u32) -> PreparedShare {
        PreparedShare {
            algorithm: self.algorithm,
            header: Header {
                version,
                prev_hash: self.prev_hash,
                merkle_root: self.merkle_root(sub.extranonce),
                ntime: sub.ntime,
                nbits: self.nbits,
                nonce: sub.nonce,
            },
            share_target: self.share_target,
            block_target: self.block_target,
        }
    }

    /// Prepare and judge in one step (sha256d callers, tests).
    pub fn validate(&self, sub: &Submission<'_>, now: u32) -> Result<CheckedShare, Reject> {
        Ok(self.prepare(sub, now)?.judge())
    }
}

impl PreparedShare {
    /// Hash the header and classify it. For scrypt this is the expensive step: run it on a
    /// blocking pool, not on an async executor thread.
    pub fn judge(&self) -> CheckedShare {
        let pow_hash = pow_hash(self.algorithm, &self.header.serialize());
        classify(self.header, pow_hash, self.share_target, self.block_target)
    }
}

/// Classify a proof-of-work hash against a share target and a block target.
pub fn classify(header: Header, pow_hash: Hash32, share: Target, block: Target) -> CheckedShare {
    let (class, work) = if block.is_met_by(&pow_hash) {
        // A block candidate is also a share: credit at least the share target's work.
        (ShareClass::BlockCandidate, share.work())
    } else if share.is_met_by(&pow_hash) {
        (ShareClass::Share, share.work())
    } else {
        (ShareClass::BelowTarget, 0)
    };
    CheckedShare {
        class,
        header,
        pow_hash,
        work,
    }
}

/// Identity of a submission for duplicate detection within one job.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
struct SubmissionKey {
    extranonce: [u8; MAX_EXTRANONCE],
    extranonce_len: u8,
    ntime: u32,
    nonce: u32,
    version: u32,
}

struct JobEntry<T> {
    /// The job's id is read from the job itself (shared by the channels it was sent to): an
    /// inline copy cost 8 bytes per kept job on every idle miner.
    job: Arc<Job>,
    /// What the caller keeps with the job (the proxy: its template), so that it needs no list
    /// of its own beside the book.
    tag: T,
    /// When the job stopped being current (Unix seconds); shares within the grace window after
    /// that are still accepted.
    retired_at: Option<u32>,
    /// Submissions seen for this job, allocated with its first share: most jobs of an idle or
    /// slow miner never get one, and an empty set inline would cost 48 bytes per kept job.
    #[allow(clippy::box_collection)] // the box is the point: 8 bytes inline instead of 48
    seen: Option<Box<HashSet<SubmissionKey>>>,
}

/// The jobs of one channel: current ones, recently retired ones within a grace window, and the
/// submissions already seen for each.
pub struct JobBook<T = ()> {
    /// At most `max_jobs` (a dozen): a linear search beats a map's hashing at this size, and
    /// 24 bytes per entry (plus the tag) instead of a hash table of 72-byte buckets keeps idle
    /// miners small.
    entries: Vec<JobEntry<T>>,
    grace_secs: u32,
    max_jobs: usize,
}

/// A job found for a submission.
pub struct Lookup {
    pub job: Arc<Job>,
    /// The job was retired (new block or switch) but is within the grace window.
    pub late: bool,
}

impl JobBook {
    /// `grace_secs`: how long retired jobs still take shares. `max_jobs`: how many jobs are kept
    /// at most (the oldest retired ones go first).
    pub fn new(grace_secs: u32, max_jobs: usize) -> JobBook {
        JobBook::tagged(grace_secs, max_jobs)
    }

    /// Add a job. With `clean`, every earlier job is retired at `now` (new block, coin switch).
    /// A job with the id of a kept one replaces it.
    pub fn add(&mut self, job: Arc<Job>, clean: bool, now: u32) {
        self.add_tagged(job, (), clean, now)
    }
}

impl<T> JobBook<T> {
    /// A book whose jobs each carry a `T` (see [`JobBook::add_tagged`]).
    pub fn tagged(grace_secs: u32, max_jobs: usize) -> JobBook<T> {
        JobBook {
            entries: Vec::new(),
            grace_secs,
            max_jobs: max_jobs.max(1),
        }
    }

    /// [`JobBook::add`] with the caller's `tag` kept beside the job until it is dropped.
    pub fn add_tagged(&mut self, job: Arc<Job>, tag: T, clean: bool, now: u32) {
        if clean {
            for entry in &mut self.entries {
                entry.retired_at.get_or_insert(now);
            }
        }
        self.prune(now);
        self.entries.retain(|e| e.job.id != job.id);
        while self.entries.len() >= self.max_jobs {
            let oldest = self
                .entries
                .iter()
                .enumerate()
                .min_by_key(|(_, e)| (e.retired_at.is_none(), e.retired_at, e.job.id))
                .map(|(i, _)| i);
            match oldest {
                Some(i) => self.entries.swap_remove(i),
                None => break,
            };
        }
        if self.entries.capacity() == 0 {
            // Exactly the bound: growing by doubling would leave a third of it unused.
            self.entries.reserve_exact(self.max_jobs);
        }
        self.entries.push(JobEntry {
            job,
            tag,
            retired_at: None,
            seen: None,
        });
    }

    /// How many kept jobs have a duplicate set allocated (jobs that had a submission).
    pub fn seen_sets(&self) -> usize {
        self.entries.iter().filter(|e| e.seen.is_some()).count()
    }

    /// A kept job and its tag, retired or not.
    pub fn get(&self, job_id: u64) -> Option<(&Arc<Job>, &T)> {
        self.entry(job_id).map(|e| (&e.job, &e.tag))
    }

    /// The tags of the kept jobs.
    pub fn tags(&self) -> impl Iterator<Item = &T> {
        self.entries.iter().map(|e| &e.tag)
    }

    fn entry(&self, job_id: u64) -> Option<&JobEntry<T>> {
        self.entries.iter().find(|e| e.job.id == job_id)
    }

    fn entry_mut(&mut self, job_id: u64) -> Option<&mut JobEntry<T>> {
        self.entries.iter_mut().find(|e| e.job.id == job_id)
    }

    /// Forget retired jobs whose grace window has passed.
    pub fn prune(&mut self, now: u32) {
        let grace = self.grace_secs;
        self.entries
            .retain(|e| e.retired_at.is_none_or(|r| now <= r.saturating_add(grace)));
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The job a submission names, or why it cannot be used.
    pub fn lookup(&self, job_id: u64, now: u32) -> Result<Lookup, Reject> {
        let entry = self.entry(job_id).ok_or(Reject::UnknownJob(job_id))?;
        match entry.retired_at {
            None => Ok(Lookup {
                job: entry.job.clone(),
                late: false,
            }),
            Some(r) if now <= r.saturating_add(self.grace_secs) => Ok(Lookup {
                job: entry.job.clone(),
                late: true,
            }),
            Some(_) => Err(Reject::StaleJob(job_id)),
        }
    }

    /// Record a submission; a second identical one is a duplicate. Call after the cheap checks,
    /// before hashing, so a flood of copies costs no hashing.
    pub fn record(&mut self, job_id: u64, sub: &Submission<'_>) -> Result<(), Reject> {
        let entry = self.entry_mut(job_id).ok_or(Reject::UnknownJob(job_id))?;
        let version = entry.job.rolled_version(sub.version)?;
        insert_seen(entry, sub, version)
    }

    /// Look up, check and record a submission, then build its header: every step short of
    /// hashing. Duplicates are caught before the merkle fold, so a flood of copies costs only
    /// the cheap checks.
    pub fn admit(
        &mut self,
        job_id: u64,
        sub: &Submission<'_>,
        now: u32,
    ) -> Result<(PreparedShare, bool), Reject> {
        let Lookup { job, late } = self.lookup(job_id, now)?;
        let version = job.check(sub, now)?;
        let entry = self.entry_mut(job_id).ok_or(Reject::UnknownJob(job_id))?;
        insert_seen(entry, sub, version)?;
        Ok((job.build(sub, version), late))
    }
}

/// Remember a submission for its job; a second identical one is a duplicate. Extranonces longer
/// than [`MAX_EXTRANONCE`] are refused.
fn insert_seen<T>(
    entry: &mut JobEntry<T>,
    sub: &Submission<'_>,
    version: u32,
) -> Result<(), Reject> {
    if sub.extranonce.len() > MAX_EXTRANONCE {
        return Err(Reject::BadExtranonceSize {
            expected: entry.job.extranonce_size,
            got: sub.extranonce.len(),
        });
    }
    let mut extranonce = [0u8; MAX_EXTRANONCE];
    extranonce[..sub.extranonce.len()].copy_from_slice(sub.extranonce);
    let key = SubmissionKey {
        extranonce,
        extranonce_len: sub.extranonce.len() as u8,
        ntime: sub.ntime,
        nonce: sub.nonce,
        version,
    };
    if entry.seen.get_or_insert_default().insert(key) {
        Ok(())
    } else {
        Err(Reject::Duplicate)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::work::CompactTarget;
    use std::collections::HashMap;

    fn job(id: u64) -> Job {
        Job {
            id,
            algorithm: Algorithm::Sha256d,
            version: 0x2000_0000,
            version_mask: 0x1fff_e000,
            prev_hash: [1; 32],
            coinbase_prefix: vec![1, 2, 3],
            coinbase_suffix: vec![4, 5, 6],
            extranonce_size: 8,
            merkle_branch: vec![[9; 32], [8; 32]],
            nbits: 0x207fffff,
            ntime: 1_700_000_000,
            share_target: CompactTarget(0x207fffff).to_target().unwrap(),
            block_target: CompactTarget(0x1d00ffff).to_target().unwrap(),
        }
    }

    fn sub(extranonce: &[u8], nonce: u32) -> Submission<'_> {
        Submission {
            extranonce,
            ntime: 1_700_000_000,
            nonce,
            version: SubmittedVersion::Unrolled,
        }
    }

    const NOW: u32 = 1_700_000_010;

    #[test]
    fn cheap_checks_reject_with_their_reason() {
        let j = job(1);
        let bad = Submission {
            ntime: 1_699_999_999,
            ..sub(&[0; 8], 1)
        };
        assert!(matches!(
            j.prepare(&bad, NOW),
            Err(Reject::NtimeOutOfRange { .. })
        ));
        let far = Submission {
            ntime: NOW + 7_201,
            ..sub(&[0; 8], 1)
        };
        assert!(matches!(
            j.prepare(&far, NOW),
            Err(Reject::NtimeOutOfRange { .. })
        ));
        assert_eq!(
            j.prepare(&sub(&[0; 7], 1), NOW),
            Err(Reject::BadExtranonceSize {
                expected: 8,
                got: 7
            })
        );
        let v = Submission {
            version: SubmittedVersion::RolledBits(0x0000_1000),
            ..sub(&[0; 8], 1)
        };
        assert_eq!(v.version, SubmittedVersion::RolledBits(0x1000));
        assert!(matches!(
            j.prepare(&v, NOW),
            Err(Reject::VersionBitsOutsideMask { .. })
        ));
        let full = Submission {
            version: SubmittedVersion::Full(0x4000_0000),
            ..sub(&[0; 8], 1)
        };
        assert!(matches!(
            j.prepare(&full, NOW),
            Err(Reject::VersionBitsOutsideMask { .. })
        ));
    }

    #[test]
    fn version_rolling_both_conventions_agree() {
        let j = job(1);
        assert_eq!(
            j.rolled_version(SubmittedVersion::RolledBits(0x0000_e000)),
            Ok(0x2000_e000)
        );
        assert_eq!(
            j.rolled_version(SubmittedVersion::Full(0x2000_e000)),
            Ok(0x2000_e000)
        );
        assert_eq!(
            j.rolled_version(SubmittedVersion::Unrolled),
            Ok(0x2000_0000)
        );
    }

    #[test]
    fn classification_follows_the_targets() {
        let j = job(1);
        // Regtest share target: about half of all nonces meet it; none meets difficulty 1.
        let mut classes = HashMap::new();
        for nonce in 0..64 {
            let c = j.validate(&sub(&[0; 8], nonce), NOW).unwrap();
            *classes.entry(c.class).or_insert(0) += 1;
            match c.class {
                ShareClass::Share => assert_eq!(c.work, 2),
                ShareClass::BelowTarget => assert_eq!(c.work, 0),
                ShareClass::BlockCandidate => panic!("difficulty-1 hit in 64 tries"),
            }
        }
        assert!(classes[&ShareClass::Share] > 10 && classes[&ShareClass::BelowTarget] > 10);
        let easy = Job {
            block_target: Target::MAX,
            ..job(1)
        };
        assert_eq!(
            easy.validate(&sub(&[0; 8], 0), NOW).unwrap().class,
            ShareClass::BlockCandidate
        );
    }

    #[test]
    fn the_header_commits_to_the_extranonce() {
        let j = job(1);
        let a = j.prepare(&sub(&[0; 8], 1), NOW).unwrap();
        let b = j.prepare(&sub(&[1; 8], 1), NOW).unwrap();
        assert_ne!(a.header.merkle_root, b.header.merkle_root);
        assert_eq!(a.header.merkle_root, j.merkle_root(&[0; 8]));
    }

    #[test]
    fn job_book_rejects_unknown_stale_and_duplicates() {
        let mut book = JobBook::new(5, 8);
        book.add(Arc::new(job(1)), false, NOW);
        assert!(book.admit(1, &sub(&[0; 8], 1), NOW).is_ok());
        assert_eq!(
            book.admit(1, &sub(&[0; 8], 1), NOW).unwrap_err(),
            Reject::Duplicate
        );
        assert!(book.admit(1, &sub(&[1; 8], 1), NOW).is_ok());
        assert_eq!(
            book.admit(9, &sub(&[0; 8], 1), NOW).unwrap_err(),
            Reject::UnknownJob(9)
        );
        // A clean job retires job 1: still usable within the grace window, stale after.
        book.add(Arc::new(job(2)), true, NOW);
        let (_, late) = book.admit(1, &sub(&[0; 8], 2), NOW + 5).unwrap();
        assert!(late);
        assert_eq!(
            book.admit(1, &sub(&[0; 8], 3), NOW + 6).unwrap_err(),
            Reject::StaleJob(1)
        );
        book.prune(NOW + 6);
        assert_eq!(book.len(), 1);
        // An oversized extranonce is refused by the size check, never reaches the seen set.
        assert!(matches!(
            book.admit(2, &sub(&[0; 40], 9), NOW),
            Err(Reject::BadExtranonceSize { got: 40, .. })
        ));
        // A rejected submission is not recorded: fixing the ntime makes it acceptable.
        let early = Submission {
            ntime: 1,
            ..sub(&[0; 8], 7)
        };
        assert!(book.admit(2, &early, NOW).is_err());
        assert!(book.admit(2, &sub(&[0; 8], 7), NOW).is_ok());
    }

    /// Every idle miner keeps a dozen entries: each is the job pointer, the retirement time and
    /// the boxed duplicate set, plus the caller's tag (the proxy's is a pointer).
    #[test]
    fn kept_jobs_stay_small() {
        assert_eq!(std::mem::size_of::<JobEntry<()>>(), 24);
        assert_eq!(std::mem::size_of::<JobEntry<Arc<u8>>>(), 32);
    }

    /// A tag lives exactly as long as its job: found with it, replaced with it, gone with it.
    #[test]
    fn tags_follow_their_jobs() {
        let mut book: JobBook<&str> = JobBook::tagged(5, 2);
        let job = |id| Arc::new(job(id));
        book.add_tagged(job(1), "one", false, 100);
        book.add_tagged(job(2), "two", false, 100);
        assert_eq!(book.get(1).map(|(j, t)| (j.id, *t)), Some((1, "one")));
        book.add_tagged(job(2), "two again", false, 100);
        assert_eq!(book.get(2).map(|(_, t)| *t), Some("two again"));
        book.add_tagged(job(3), "three", true, 100);
        let mut tags: Vec<&str> = book.tags().copied().collect();
        tags.sort();
        assert_eq!(tags, ["three", "two again"]);
        assert!(book.get(1).is_none());
    }

    #[test]
    fn job_book_is_bounded() {
        let mut book = JobBook::new(60, 4);
        for id in 0..10 {
            book.add(Arc::new(job(id)), id % 3 == 0, NOW);
        }
        assert_eq!(book.len(), 4);
        assert!(book.lookup(9, NOW).is_ok());
    }

    #[test]
    fn job_book_allocates_duplicate_sets_only_for_jobs_with_shares() {
        // An idle miner's kept jobs cost their entry only: no duplicate set before a share.
        let mut book = JobBook::new(5, 12);
        for id in 0..12 {
            book.add(Arc::new(job(id)), id % 4 == 0, NOW);
        }
        assert_eq!(book.seen_sets(), 0);
        assert!(book.entries.capacity() <= 12, "entries over-allocated");
        assert!(std::mem::size_of::<JobEntry<()>>() <= 32);
        // A pointer-sized tag (the proxy keeps its template) adds only itself.
        assert!(std::mem::size_of::<JobEntry<Arc<()>>>() <= 40);
        // A rejected submission (bad ntime) creates none either; an admitted one does.
        let early = Submission {
            ntime: 1,
            ..sub(&[0; 8], 1)
        };
        assert!(book.admit(11, &early, NOW).is_err());
        assert_eq!(book.seen_sets(), 0);
        assert!(book.admit(11, &sub(&[0; 8], 1), NOW).is_ok());
        assert_eq!(book.seen_sets(), 1);
        assert_eq!(
            book.admit(11, &sub(&[0; 8], 1), NOW).unwrap_err(),
            Reject::Duplicate
        );
    }

    #[test]
    fn job_book_replaces_a_job_with_the_same_id() {
        let mut book = JobBook::new(5, 4);
        book.add(Arc::new(job(1)), false, NOW);
        assert!(book.admit(1, &sub(&[0; 8], 1), NOW).is_ok());
        let mut again = job(1);
        again.ntime = NOW;
        book.add(Arc::new(again), false, NOW);
        assert_eq!(book.len(), 1);
        // The new job's duplicate set starts empty, with the new job's rules.
        let s = Submission {
            ntime: NOW,
            ..sub(&[0; 8], 1)
        };
        assert!(book.admit(1, &s, NOW).is_ok());
        assert!(matches!(
            book.admit(1, &sub(&[0; 8], 2), NOW),
            Err(Reject::NtimeOutOfRange { .. })
        ));
    }

    /// The book as it was specified with a map (a job per id, a duplicate set per job):
    /// the compact book must answer every sequence of adds and submissions the same way.
    /// Per job: when it was retired, and the (extranonce, nonce) pairs seen.
    type ModelJob = (Option<u32>, HashSet<(Vec<u8>, u32)>);

    #[derive(Default)]
    struct Model {
        jobs: HashMap<u64, ModelJob>,
    }

    impl Model {
        fn add(&mut self, id: u64, clean: bool, now: u32, grace: u32, max: usize) {
            if clean {
                for (retired, _) in self.jobs.values_mut() {
                    retired.get_or_insert(now);
                }
            }
            self.jobs
                .retain(|_, (r, _)| r.is_none_or(|r| now <= r.saturating_add(grace)));
            self.jobs.remove(&id);
            while self.jobs.len() >= max {
                let oldest = *self
                    .jobs
                    .iter()
                    .min_by_key(|(id, (r, _))| (r.is_none(), *r, **id))
                    .unwrap()
                    .0;
                self.jobs.remove(&oldest);
            }
            self.jobs.insert(id, (None, HashSet::new()));
        }

        fn admit(
            &mut self,
            id: u64,
            en: &[u8],
            nonce: u32,
            now: u32,
            grace: u32,
        ) -> Result<bool, Reject> {
            let (retired, seen) = self.jobs.get_mut(&id).ok_or(Reject::UnknownJob(id))?;
            let late = match *retired {
                None => false,
                Some(r) if now <= r.saturating_add(grace) => true,
                Some(_) => return Err(Reject::StaleJob(id)),
            };
            if !seen.insert((en.to_vec(), nonce)) {
                return Err(Reject::Duplicate);
            }
            Ok(late)
        }
    }

    proptest::proptest! {
        #[test]
        fn job_book_matches_the_map_model(
            ops in proptest::collection::vec((0u8..3, 0u64..8, proptest::bool::ANY, 0u32..3, 0u8..2, 0u32..3), 1..80)
        ) {
            let (grace, max) = (2, 4);
            let mut book = JobBook::new(grace, max);
            let mut model = Model::default();
            let mut now = NOW;
            for (op, id, clean, dt, en, nonce) in ops {
                now += dt;
                match op {
                    0 => {
                        book.add(Arc::new(job(id)), clean, now);
                        model.add(id, clean, now, grace, max);
                    }
                    1 => {
                        book.prune(now);
                        model.jobs.retain(|_, (r, _)| r.is_none_or(|r| now <= r.saturating_add(grace)));
                    }
                    _ => {
                        let extranonce = [en; 8];
                        let got = book.admit(id, &sub(&extranonce, nonce), now).map(|(_, late)| late);
                        let want = model.admit(id, &extranonce, nonce, now, grace);
                        proptest::prop_assert_eq!(got, want);
                    }
                }
                proptest::prop_assert_eq!(book.len(), model.jobs.len());
                proptest::prop_assert!(book.seen_sets() <= book.len());
            }
        }
    }
}
