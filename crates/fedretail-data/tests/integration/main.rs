//! Reading stores' exports and building their tasks, over files the tests write. One
//! test binary, so the release build links it once.

mod store_data;
mod store_tasks;
