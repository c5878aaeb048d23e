//! A job template: the active upstream's job folded for our miners, shared by every miner of a
//! group. Each miner turns it into its own [`Job`] with its own difficulty.

use std::sync::{Arc, Mutex, OnceLock};
use std::time::Instant;

use defpool_core::share::Job;
use defpool_core::work::{CompactTarget, Target};
use defpool_core::{Algorithm, Ticker};
use defpool_stratum::sv1::{Notify, PreparedNotify};
use defpool_stratum::sv2::{EncodedFrame, Message, Sv2Error};

use crate::layout::Fold;
use crate::upstream::{UpstreamHandle, UpstreamJob};

/// Marks the first template after a switch, so miners can report how fast they got it.
#[derive(Clone, Copy, Debug)]
pub struct SwitchMark {
    pub epoch: u64,
    pub commanded_at: Instant,
}

#[derive(Debug)]
pub struct JobTemplate {
    /// Increases with every template of the group.
    pub seq: u64,
    pub epoch: u64,
    pub algorithm: Algorithm,
    pub coin: Ticker,
    pub upstream: Arc<UpstreamHandle>,
    pub job: UpstreamJob,
    pub fold: Fold,
    /// `coinbase1 ‖ upstream prefix ‖ pad`.
    pub coinbase_prefix: Vec<u8>,
    /// Bits miners may roll: the coin's mask ∩ what the upstream granted.
    pub version_mask: u32,
    /// The network target (from nbits): a share meeting it is a block.
    pub network_target: Target,
    /// Miners must drop earlier work (new block or new coin).
    pub clean: bool,
    pub switch: Option<SwitchMark>,
    /// The SV1 notify, serialized on first use and shared by every SV1 miner.
    notify: OnceLock<PreparedNotify>,
    /// Jobs already built from this template, shared by the miners whose job is the same
    /// (same id, extranonce layout, mask and target): a switch builds a few, not one per miner.
    shared_jobs: Mutex<Vec<Arc<Job>>>,
    /// SV2 job frames encoded once for every extended channel with the same layout (the
    /// channel id is set per channel when sending).
    sv2_frames: Mutex<Vec<(Sv2FrameKey, Arc<EncodedFrame>)>>,
}

/// What distinguishes one channel's SV2 job frames from another's on the same template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Sv2FrameKey {
    ExtendedJob {
        job_id: u32,
        pad: usize,
        rolling_allowed: bool,
        min_ntime: Option<u32>,
    },
    PrevHash {
        job_id: u32,
    },
}

/// How many distinct jobs a template keeps for sharing; miners beyond (rare difficulties) get
/// their own.
const SHARED_JOBS_KEPT: usize = 16;

/// Bits of a job id below the template's `seq`: the resend count of the template to one miner
/// (vardiff re-sends the same work under a new id with a new target).
pub const RESEND_BITS: u32 = 8;

impl JobTemplate {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        seq: u64,
        epoch: u64,
        algorithm: Algorithm,
        upstream: Arc<UpstreamHandle>,
        job: UpstreamJob,
        fold: Fold,
        version_mask: u32,
        clean: bool,
        switch: Option<SwitchMark>,
    ) -> JobTemplate {
        let coinbase_prefix = fold.miner_coinbase_prefix(&job.coinbase1);
        let nbits_target = CompactTarget(job.nbits)
            .to_target()
            .unwrap_or_else(Target::diff1);
        let network_target = match job.block_target {
            Some(t) => t.harder(nbits_target),
            None => nbits_target,
        };
        JobTemplate {
            seq,
            epoch,
            algorithm,
            coin: upstream.coin.clone(),
            upstream,
            job,
            fold,
            coinbase_prefix,
            version_mask,
            network_target,
            clean,
            switch,
            notify: OnceLock::new(),
            shared_jobs: Mutex::new(Vec::new()),
            sv2_frames: Mutex::new(Vec::new()),
        }
    }

    /// The job id of this template's `resend`-th sending to a miner: the same for every miner,
    /// so one serialized job serves all. Past the last resend number the id repeats (the book
    /// then replaces the job), which only a miner re-targeted hundreds of times on one
    /// template could reach.
    pub fn job_id(&self, resend: u32) -> u64 {
        (self.seq << RESEND_BITS) | u64::from(resend.min((1 << RESEND_BITS) - 1))
    }

    /// The SV2 job id (32 bits) of this template's `resend`-th sending; wraps after 2^24
    /// templates, far beyond the jobs a channel keeps.
    pub fn sv2_job_id(&self, resend: u32) -> u32 {
        (self.job_id(resend) as u32).max(1)
    }

    fn sv2_frame(
        &self,
        key: Sv2FrameKey,
        message: impl FnOnce() -> Message,
    ) -> Result<Arc<EncodedFrame>, Sv2Error> {
        let mut frames = self.sv2_frames.lock().expect("sv2 frames lock");
        if let Some((_, f)) = frames.iter().find(|(k, _)| *k == key) {
            return Ok(f.clone());
        }
        let frame = Arc::new(EncodedFrame::new(&message())?);
        if frames.len() < SHARED_JOBS_KEPT {
            frames.push((key, frame.clone()));
        }
        Ok(frame)
    }

    /// `NewExtendedMiningJob` for channels with padding `pad`, encoded once (channel id 0:
    /// set it with `Sv2Writer::queue_for_channel`).
    pub fn sv2_extended_job(
        &self,
        job_id: u32,
        pad: usize,
        rolling_allowed: bool,
        min_ntime: Option<u32>,
    ) -> Result<Arc<EncodedFrame>, Sv2Error> {
        let key = Sv2FrameKey::ExtendedJob {
            job_id,
            pad,
            rolling_allowed,
            min_ntime,
        };
        self.sv2_frame(key, || Message::NewExtendedMiningJob {
            channel_id: 0,
            job_id,
            min_ntime,
            version: self.job.version,
            version_rolling_allowed: rolling_allowed,
            merkle_path: self.job.merkle_branch.clone(),
            coinbase_tx_prefix: if pad == self.fold.pad {
                self.coinbase_prefix.clone()
            } else {
                self.coinbase_prefix_with_pad(pad)
            },
            coinbase_tx_suffix: self.job.coinbase2.clone(),
        })
    }

    /// `SetNewPrevHash` for this template's job `job_id`, encoded once (channel id 0).
    pub fn sv2_prev_hash(&self, job_id: u32) -> Result<Arc<EncodedFrame>, Sv2Error> {
        self.sv2_frame(Sv2FrameKey::PrevHash { job_id }, || {
            Message::SetNewPrevHash {
                channel_id: 0,
                job_id,
                prev_hash: self.job.prev_hash,
                min_ntime: self.job.ntime,
                nbits: self.job.nbits,
            }
        })
    }

    /// The SV1 `mining.notify` of this template, built once.
    pub fn sv1_notify(&self) -> &PreparedNotify {
        self.notify.get_or_init(|| {
            PreparedNotify::new(&Notify {
                job_id: String::new(),
                prev_hash: self.job.prev_hash,
                coinbase1: self.coinbase_prefix.clone(),
                coinbase2: self.job.coinbase2.clone(),
                merkle_branch: self.job.merkle_branch.clone(),
                version: self.job.version,
                nbits: self.job.nbits,
                ntime: self.job.ntime,
                clean_jobs: false,
            })
        })
    }

    /// The zero padding before the extranonce in a job made by [`JobTemplate::shared_job`]
    /// (its coinbase prefix is the template's with that padding instead of the fold's).
    pub fn pad_of(&self, job: &defpool_core::share::Job) -> usize {
        (job.coinbase_prefix.len() + self.fold.pad).saturating_sub(self.coinbase_prefix.len())
    }

    /// A miner's job (see [`JobTemplate::job_for`]), shared with the other miners that get the
    /// same one. `pad`: the channel's padding (the template's own for SV1 and standard channels).
    pub fn shared_job(
        &self,
        id: u64,
        prefix_len: usize,
        rolled: usize,
        pad: usize,
        version_mask: u32,
        share_target: Target,
    ) -> Arc<Job> {
        let mask = version_mask & self.version_mask;
        let extranonce_size = prefix_len + rolled;
        let base = self.coinbase_prefix.len() - self.fold.pad;
        let mut jobs = self.shared_jobs.lock().expect("shared jobs lock");
        if let Some(j) = jobs.iter().find(|j| {
            j.id == id
                && j.extranonce_size == extranonce_size
                && j.coinbase_prefix.len() == base + pad
                && j.version_mask == mask
                && j.share_target == share_target
        }) {
            return j.clone();
        }
        let mut job = self.job_for(id, prefix_len, version_mask, share_target);
        if pad != self.fold.pad {
            job.coinbase_prefix = self.coinbase_prefix_with_pad(pad);
        }
        job.extranonce_size = extranonce_size;
        let job = Arc::new(job);
        if jobs.len() < SHARED_JOBS_KEPT {
            jobs.push(job.clone());
        }
        job
    }

    /// The hardest share target a channel may get on this work, when the work carries an
    /// explicit block target (the coin adapter): a hash meeting the block target must reach the
    /// adapter, so the proxies' channel targets are never harder than it. Without one, vardiff
    /// alone decides (regtest nbits would otherwise drive every miner to difficulty ~0).
    pub fn share_cap(&self) -> Option<Target> {
        self.job.block_target.map(|b| b.harder(self.network_target))
    }

    /// Whether this template continues the same chain tip and upstream as `previous`.
    pub fn continues(&self, previous: &JobTemplate) -> bool {
        self.job.prev_hash == previous.job.prev_hash
            && Arc::ptr_eq(&self.upstream, &previous.upstream)
    }

    /// Whether this template is a routine update of `previous`: the same block and upstream and
    /// not marked clean, so work on `previous` stays valid and the new job is not urgent.
    pub fn is_routine_update_of(&self, previous: &JobTemplate) -> bool {
        !self.clean && self.continues(previous)
    }

    /// For a channel that rolls `rolled` bytes (after its prefix): the padding between the
    /// upstream's prefix and the miner's, or `None` if the upstream's space is too small.
    pub fn pad_for(&self, rolled: usize) -> Option<usize> {
        (self.fold.pad + self.fold.rolled_bytes).checked_sub(rolled)
    }

    /// The coinbase prefix for a channel with padding `pad`: `coinbase1 ‖ upstream prefix ‖ pad`.
    pub fn coinbase_prefix_with_pad(&self, pad: usize) -> Vec<u8> {
        let base = self.coinbase_prefix.len() - self.fold.pad;
        let mut out = Vec::with_capacity(base + pad);
        out.extend_from_slice(&self.coinbase_prefix[..base]);
        out.resize(base + pad, 0);
        out
    }

    /// The job one miner mines: its extranonce is `prefix ‖ rolled` (`prefix_len + rolled`
    /// bytes), its target its own.
    pub fn job_for(
        &self,
        id: u64,
        prefix_len: usize,
        version_mask: u32,
        share_target: Target,
    ) -> Job {
        Job {
            id,
            algorithm: self.algorithm,
            version: self.job.version,
            version_mask: version_mask & self.version_mask,
            prev_hash: self.job.prev_hash,
            coinbase_prefix: self.coinbase_prefix.clone(),
            coinbase_suffix: self.job.coinbase2.clone(),
            extranonce_size: prefix_len + self.fold.rolled_bytes,
            merkle_branch: self.job.merkle_branch.clone(),
            nbits: self.job.nbits,
            ntime: self.job.ntime,
            share_target,
            block_target: self.network_target,
        }
    }
}
