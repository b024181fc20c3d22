//! The blocking driver (feature `blocking`).
