//! An SV2 pool (or our coin adapter) as upstream: one extended channel shared by all miners.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Emitter, UpstreamCommand, UpstreamSpec, UpstreamStats};

pub async fn run(
    spec: UpstreamSpec,
    _emitter: &Emitter,
    _commands: mpsc::Receiver<UpstreamCommand>,
    _stats: Arc<UpstreamStats>,
) -> String {
    format!(
        "SV2 upstream {} not supported by this build yet",
        spec.upstream.name
    )
}
