//! The coordinator against real and hostile peers on 127.0.0.1. One test binary, so the
//! release build links it once.

mod jobs_folder;
mod peer_input;
mod secure_rounds;
