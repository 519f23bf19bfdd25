//! The built `fedretail` binary as an operator runs it: coordinator and agent processes
//! on 127.0.0.1, the commands, and their errors. One test binary, so the release build
//! links it once.

mod browser;
mod common;
mod jobs;
mod kills;
mod processes;
mod tabular;
mod tls;
