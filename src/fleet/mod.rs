//! A fleet of veers acting as one: the run-time layer (weights, latches,
//! rollout progress) shared through etcd v3, so a trip, a rollback or a
//! promote on any replica is in force on every replica.
//!
//! `merge` is the pure rule for two replicas changing one service at once;
//! `etcd` (cargo feature `fleet`: its client's build needs `protoc`) keeps a
//! replica's layer and the fleet's in step; `windows` shares each replica's
//! window counts so the guard judges the fleet's sum; `leader` elects the
//! one replica that advances rollouts (a single process is its own leader).

#[cfg(feature = "fleet")]
pub mod etcd;
pub mod leader;
pub mod merge;
#[cfg(feature = "fleet")]
pub mod store;
pub mod windows;
