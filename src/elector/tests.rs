//! White-box tests of the elector. Scenario-level conformance with client-go is in
//! `tests/conformance.rs`.
