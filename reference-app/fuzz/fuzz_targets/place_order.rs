//! Arbitrary bytes as the body of `POST /api/v1/orders`: a typed rejection, or an order that
//! round-trips and that commerce-core's validation accepts exactly within the documented
//! limits (`reference_app_fuzz::check_place_order`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|body: &[u8]| reference_app_fuzz::check_place_order(body));
