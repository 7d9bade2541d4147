//! dcd: the Docker host for the Device Connect mesh.
//!
//! The binary (`main.rs`) wires threads together; everything it wires lives
//! here, one module per concern, in one-way layers (README, "Design"):
//!
//! 1. `time`, `ids`, `labels`, `encoding`, `sync`, `error`, `notify`, `signals`, `heap`: import nothing of ours;
//! 2. `engine`, `policy`, `events`;
//! 3. `spec`, `compose`, `logs`, `view`, `sessions`, `state`, `jobs`;
//! 4. `driver`: the function table;
//! 5. `rpc`, then `mesh`, then `serve` (the worker and describe threads), `watchdog` and `client`
//!    (the `dcd` subcommands), then `config`.

// The advertised JSON schemas are large `json!` literals.
#![recursion_limit = "256"]

pub mod client;
pub mod compose;
pub mod config;
pub mod driver;
pub mod encoding;
pub mod engine;
pub mod error;
pub mod events;
pub mod heap;
pub mod ids;
pub mod jobs;
pub mod labels;
pub mod logs;
pub mod mesh;
pub mod notify;
pub mod policy;
pub mod rpc;
pub mod serve;
pub mod sessions;
pub mod signals;
pub mod spec;
pub mod state;
pub mod sync;
pub mod time;
pub mod view;
pub mod watchdog;
