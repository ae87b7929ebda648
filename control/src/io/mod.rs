//! The control plane's I/O beside the HTTP API: the database ([`store`]), Redis or its
//! in-process stand-in ([`cache`]), the relay mesh and the dataplane link ([`mesh`]), and the
//! TURN settings sent to the dataplane ([`turn_settings`]). The decisions they carry out are in
//! [`crate::domain`].

pub mod cache;
pub mod mesh;
pub mod store;
pub mod turn_settings;
