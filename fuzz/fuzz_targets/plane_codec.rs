#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| boson_fuzz::channel_harness::plane_codec(data));
