//! The upstream side: endpoints, their pooled connections, the choice of an
//! endpoint within a version, and each endpoint's in-service flags (`health`:
//! read and reported by the request path; the probes and ejections that set
//! them are `crate::health`).
//!
//! An `Endpoint` outlives snapshots: `Registry` hands the same `Arc<Endpoint>` to
//! every snapshot that names its address, so a reload keeps its warm connections,
//! its outstanding-request count and its health. Depends on `config`, `clock`,
//! `outcome` (the failure reasons it classifies into), and on `tls` for
//! connections to TLS endpoints.

pub mod balance;
pub mod body;
pub mod endpoint;
pub mod error;
pub mod h1;
pub mod health;
pub mod registry;

pub use body::{RequestBody, ResponseBody};
pub use endpoint::{Endpoint, Lease};
pub use error::UpstreamError;
pub use registry::Registry;
