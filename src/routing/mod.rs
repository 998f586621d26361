//! Pure routing decisions: which service a request belongs to (`table`) and which
//! version of it serves the request (`split`). Nothing here does I/O; everything
//! is built when a snapshot is built and only read on the request path.

pub mod rules;
pub mod split;
pub mod sticky;
pub mod table;

pub use split::WeightedSplit;
pub use table::RouteTable;
