//! Go toolchains the Go fixtures are built with, oldest first. One list for
//! both sides: `cargo xtask setup` installs exactly these (xtask compiles
//! this file through `#[path]`) and the tests build against them.

pub const GO_VERSIONS: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];
