//! SV2 miners (standard and extended channels), once the SV2 transport is available.

use std::net::SocketAddr;

use tokio::sync::watch;

use crate::miner::{Ctx, End, MinerStats};
use crate::{LoadgenError, MinersOptions};

pub(crate) fn check(_opts: &MinersOptions) -> Result<(), LoadgenError> {
    Err(LoadgenError::Unsupported("SV2 miners"))
}

pub(crate) async fn session(
    _index: usize,
    _addr: SocketAddr,
    _ctx: &Ctx,
    _stats: &mut MinerStats,
    _stop: &mut watch::Receiver<bool>,
) -> End {
    End::Stopped
}
