//! SV2 miners (Noise NX): standard, extended and group channels.
