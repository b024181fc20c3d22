//! proptest strategies over simulation parameters, for property tests of your own
//! configuration.
//!
//! ```
//! use leasehold::{Config, Identity};
//! use leasehold::sim::{self, strategy};
//! use proptest::prelude::*;
//!
//! fn my_config() -> Config {
//!     Config::new(Identity::new("template").expect("non-empty"))
//! }
//!
//! proptest! {
//!     #![proptest_config(ProptestConfig::with_cases(8))]
//!     #[test]
//!     fn my_config_never_has_two_leaders(params in strategy::below_bound(my_config())) {
//!         let outcome = sim::run(&params);
//!         prop_assert!(outcome.ok(), "{outcome}");
//!     }
//! }
//! # fn main() { my_config_never_has_two_leaders(); }
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
