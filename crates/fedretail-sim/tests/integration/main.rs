//! The simulation's wiring and yardsticks: the demo end to end, the analytics against
//! their references, learning methods against exact fits, privacy in the loop. One test
//! binary, so the release build links it once.

mod analytics;
mod attack;
mod demo;
mod learning;
mod privacy;
