#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| leasehold::fuzz::elector_inputs(data));
