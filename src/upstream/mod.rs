//! The upstream side: endpoints, their pooled connections, and the choice of an
//! endpoint within a version.
//!
//! An `Endpoint` outlives snapshots: `Registry` hands the same `Arc<Endpoint>` to
//! every snapshot that names its address, so a reload keeps its warm connections
//! and its outstanding-request count. Depends on `config`, and on `tls` for
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
