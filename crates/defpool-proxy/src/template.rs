//! A job template: the active upstream's job folded for our miners, shared by every miner of a
//! group. Each miner turns it into its own [`Job`] with its own difficulty.

use std::sync::Arc;
use std::time::Instant;

use defpool_core::share::Job;
use defpool_core::work::{CompactTarget, Target};
use defpool_core::{Algorithm, Ticker};

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
}

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
        }
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
