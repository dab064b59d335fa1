//! The sync pipeline: plan → fetch → decode → enrich → store.

pub mod plan;
