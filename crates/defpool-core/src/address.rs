//! Payout addresses: parsing and validation per coin and network.
