//! Miner-facing listeners and sessions.

pub mod sv1;
pub mod sv2;

use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use defpool_core::share::{CheckedShare, Reject, ShareClass};
use defpool_core::work::Target;

use crate::context::Context;
use crate::group::GroupShared;
use crate::template::JobTemplate;
use crate::upstream::UpstreamShare;

/// How often vardiff looks at a session's share rate (on the session's one timer).
const RETARGET_EVERY: Duration = Duration::from_secs(10);

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
    let below_pool_target = !template.job.target.is_met_by(&checked.pow_hash);
    if below_pool_target && checked.class != ShareClass::BlockCandidate {
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
        below_pool_target,
    };
    if !template.upstream.submit(share).await {
        tracing::warn!(upstream = %template.upstream.name, "upstream closed; share accounted but not forwarded");
        return false;
    }
    true
}

/// Logs and counts the end of a miner's session (`protocol`: "SV1" or "SV2"). Protocol
/// violations are logged at info, ordinary ends at debug.
fn session_ended(
    protocol: &str,
    peer: &SocketAddr,
    reason: &str,
    ctx: &Context,
    group: &GroupShared,
) {
    if reason.starts_with("protocol violation") {
        tracing::info!(peer = %peer, reason = %reason, "{protocol} miner disconnected");
    } else {
        tracing::debug!(peer = %peer, reason = %reason, "{protocol} miner disconnected");
    }
    ctx.counters.disconnects.fetch_add(1, Ordering::Relaxed);
    group.miners.fetch_sub(1, Ordering::Relaxed);
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

#[cfg(test)]
mod tests {
    use std::future::Future;

    fn future_size6<A, B, C, D, E, G, F: Future>(_: fn(A, B, C, D, E, G) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    fn future_size7<A, B, C, D, E, G, H, F: Future>(_: fn(A, B, C, D, E, G, H) -> F) -> usize {
        std::mem::size_of::<F>()
    }

    /// A tokio task is as large as its future, for as long as the connection lives: the SV2
    /// handshake and the share path (verifier, outbox) are boxed so that an idle miner's task
    /// holds only its session and the futures it waits on (the listener spawns each kind on its
    /// own, so an SV1 task is not sized for an SV2 session).
    /// Before the boxing both were about 3.6 KB; then 1,000 B (SV1) and 1,488 B (SV2); now
    /// 856 B and 864 B: no arguments kept beside the session, the SV2 reader polled in place,
    /// its first message and each one received boxed. Tokio adds about 100 bytes of its own and
    /// rounds a task up to 128 bytes: under 912 bytes, a task is 1 KiB (1.3 and 1.8 KiB before).
    #[test]
    fn miner_session_tasks_stay_small() {
        let sv1 = future_size6(super::sv1::serve);
        let sv2 = future_size7(super::sv2::serve);
        eprintln!("session futures: SV1 {sv1} B, SV2 {sv2} B");
        assert!(sv1 <= 912, "SV1 session future is {sv1} bytes");
        assert!(sv2 <= 912, "SV2 session future is {sv2} bytes");
    }
}
