//! Block and transaction encoding.
