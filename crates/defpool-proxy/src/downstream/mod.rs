//! Miner-facing listeners and sessions.

pub mod sv1;
pub mod sv2;

use std::sync::Arc;

use defpool_core::share::{CheckedShare, Reject, ShareClass};
use defpool_core::work::Target;

use crate::template::JobTemplate;
use crate::upstream::UpstreamShare;

/// Forwards a share to the upstream of the job it solved, if it meets that upstream's target.
/// `extranonce` is the miner's whole extranonce (`prefix ‖ rolled`); `pad` the zeros before it
/// (the template's fold pad, or less for a channel that rolls more).
pub async fn forward(
    template: &Arc<JobTemplate>,
    checked: &CheckedShare,
    extranonce: &[u8],
    pad: usize,
    found_by: &crate::identity::MinerIdentity,
) -> bool {
    if !template.job.target.is_met_by(&checked.pow_hash)
        && checked.class != ShareClass::BlockCandidate
    {
        return false;
    }
    let mut en = Vec::with_capacity(pad + extranonce.len());
    en.resize(pad, 0);
    en.extend_from_slice(extranonce);
    let share = UpstreamShare {
        job_id: template.job.job_id.clone(),
        extranonce: en,
        ntime: checked.header.ntime,
        nonce: checked.header.nonce,
        version: checked.header.version,
        job_version: template.job.version,
        found_by: format!("{}.{}", found_by.user, found_by.worker),
    };
    if !template.upstream.submit(share).await {
        tracing::warn!(upstream = %template.upstream.name, "upstream closed; share accounted but not forwarded");
        return false;
    }
    true
}

/// A share target for a stratum difficulty, falling back to the easiest valid one.
pub fn share_target(difficulty: f64, algorithm: defpool_core::Algorithm) -> Target {
    Target::from_stratum_difficulty(difficulty, algorithm)
        .unwrap_or_else(|| Target::from_le_bytes([0xff; 32]))
}

/// SV1 error code and message for a core reject.
pub fn sv1_reject(r: &Reject) -> (i64, String) {
    use defpool_stratum::sv1::error_code as c;
    match r {
        Reject::UnknownJob(_) => (c::JOB_NOT_FOUND, "Job not found".into()),
        Reject::StaleJob(_) => (c::JOB_NOT_FOUND, "Stale share".into()),
        Reject::Duplicate => (c::DUPLICATE_SHARE, "Duplicate share".into()),
        other => (c::OTHER, other.to_string()),
    }
}
