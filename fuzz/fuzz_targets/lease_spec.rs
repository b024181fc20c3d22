#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| leasehold::fuzz::lease_spec(data));
