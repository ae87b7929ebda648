#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| boson_fuzz::harness::turn_stream(data));
