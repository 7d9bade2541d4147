//! dcd: the Docker host for the Device Connect mesh.
//!
//! The binary (`main.rs`) wires threads together; everything it wires lives
//! here, one module per concern, so integration tests can drive the pieces.

// The advertised JSON schemas are large `json!` literals.
#![recursion_limit = "256"]

pub mod compose;
pub mod config;
pub mod driver;
pub mod engine;
pub mod fleet;
pub mod logs;
pub mod mesh;
pub mod policy;
pub mod rpc;
pub mod spec;
pub mod state;
pub mod time;
