//! The upstream side: endpoints, their pooled connections (`pool`), the choice
//! of an endpoint within a version (`balance`), the one retry loop over a
//! version's endpoints (`retry`), the one classification of what went wrong
//! (`error`), whichever client spoke: veer's own HTTP/1.1 exchange (`h1`) or
//! hyper's; and each endpoint's in-service flags (`health`: read and reported
//! by the request path; the probes and ejections that set them are
//! `crate::health`).
//!
//! An `Endpoint` outlives snapshots: `Registry` hands the same `Arc<Endpoint>` to
//! every snapshot that names its address, so a reload keeps its warm connections,
//! its outstanding-request count and its health. Endpoints written
//! `NAME:PORT` get their addresses from `dns`, which re-resolves them in the
//! background. Depends on `config`, `clock`,
//! `outcome` (the failure reasons it classifies into), and on `tls` for
//! connections to TLS endpoints.

pub mod balance;
pub mod body;
pub mod dns;
pub mod endpoint;
pub mod error;
pub mod h1;
pub mod health;
pub mod pool;
pub mod registry;
pub mod retry;

pub use body::{RequestBody, ResponseBody};
pub use dns::Names;
pub use endpoint::{Endpoint, Lease};
pub use error::UpstreamError;
pub use registry::Registry;
pub use retry::Failed;
