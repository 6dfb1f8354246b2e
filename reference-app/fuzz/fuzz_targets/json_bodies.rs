//! Arbitrary bytes as the other JSON bodies (the first byte picks product creation, rename,
//! stock receipt or order placement): a typed rejection or a value that round-trips
//! (`reference_app_fuzz::check_json_body`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| reference_app_fuzz::check_json_body(data));
