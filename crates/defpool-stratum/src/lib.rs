//! Stratum for DefPool: the V1 JSON-RPC dialect most installed hardware speaks, and V2 (binary,
//! Noise-encrypted) through the Stratum Reference Implementation crates.

pub mod sv1;
pub mod sv2;
pub mod vardiff;
