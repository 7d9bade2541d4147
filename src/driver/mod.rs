//! The `docker_host` driver: the functions of the Python dcd (spec §7) and
//! ours, one file per family. Each function is a row (`base::Function`) that
//! names its policy kind, whether it targets a container, its advertised
//! schema and its handler; `table` lists the rows and dispatches to them.

mod base;
mod compose;
mod containers;
mod exec;
mod images;
mod jobs;
mod logs;
mod objects;
mod status;
mod table;

pub use base::Driver;
