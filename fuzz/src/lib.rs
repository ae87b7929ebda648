//! Fuzz targets for the BosonServer protocol core and the control/dataplane channel. The target
//! bodies live in [`harness`] (shared with the corpus replay test of `boson-dataplane-proto`)
//! and [`channel_harness`] (shared with that of `boson-channel`); see `README.md`.

pub mod channel_harness;
pub mod harness;
