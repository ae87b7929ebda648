#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| boson_fuzz::harness::quic_wire(data));
