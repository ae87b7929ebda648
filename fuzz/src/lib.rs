//! Fuzz targets for the BosonServer protocol core. The target bodies live in [`harness`], shared
//! with the corpus replay test of `boson-dataplane-proto`; see `README.md`.

pub mod harness;
