//! proptest strategies over simulation parameters, for property tests of your own
//! configuration.
//!
//! In a test file, inside `proptest! { .. }` or with a `TestRunner` as here:
//!
//! ```
//! use leasehold::sim::{self, strategy};
//! use leasehold::{Config, Identity};
//! use proptest::prelude::*;
//! use proptest::test_runner::{Config as Cases, TestRunner};
//!
//! let my_config = Config::new(Identity::new("template")?);
//! let mut runner = TestRunner::new(Cases::with_cases(8));
//! runner
//!     .run(&strategy::below_bound(my_config), |params| {
//!         let outcome = sim::run(&params);
//!         prop_assert!(outcome.ok(), "{}", outcome);
//!         Ok(())
//!     })
//!     .expect("never two leaders below the bound");
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use proptest::prelude::*;

use super::{Params, Scenario};
use crate::config::Config;

/// Parameters for `scenario` with an arbitrary seed: everything the scenario leaves open is
/// derived from the seed.
pub fn params(scenario: Scenario) -> impl Strategy<Value = Params> {
    any::<u64>().prop_map(move |seed| scenario.params(seed))
}

/// Parameters with every fault on and a clock-rate ratio anywhere below the safe bound
/// `lease_duration / renew_deadline` of `config`: the runs safety must survive.
pub fn below_bound(config: Config) -> impl Strategy<Value = Params> {
    let bound = config.tolerated_clock_rate_ratio();
    (any::<u64>(), 0.0..0.995f64).prop_map(move |(seed, f)| {
        let mut scenario = Scenario::new(config.clone());
        scenario.clock_rate_ratio = Some(1.0 + (bound - 1.0).max(0.0) * f);
        scenario.params(seed)
    })
}
