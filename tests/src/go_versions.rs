//! Go toolchains the Go fixtures are built with, oldest first. One list for
//! both sides: `cargo xtask setup` installs exactly these (xtask compiles
//! this file through `#[path]`) and the tests build against them.

pub const GO_VERSIONS: &[&str] = &[
    "1.21.13", "1.22.10", "1.23.9", "1.24.11", "1.25.5", "1.26.6", "1.27.3",
];

/// Each release by name, for the tests that pick one.
pub const GO_1_21: &str = GO_VERSIONS[0];
pub const GO_1_22: &str = GO_VERSIONS[1];
pub const GO_1_23: &str = GO_VERSIONS[2];
pub const GO_1_24: &str = GO_VERSIONS[3];
pub const GO_1_25: &str = GO_VERSIONS[4];
pub const GO_1_26: &str = GO_VERSIONS[5];
pub const GO_1_27: &str = GO_VERSIONS[6];
