//! The harvester: keeps a PostGIS database in step with Mapillary's street-level imagery.
//!
//! Data flows one way: a [`region`] is covered with z14 tiles ([`cover`]); the [`pipeline`]
//! fetches them through the [`api`] client, decodes them with [`mvt`], diffs them against the
//! database, enriches what is new through the Graph API, and writes them with [`store`], while
//! [`jobs`] tracks runs and tile states so that every run can resume. The API contract it shares
//! with the simulator (tile ids, tilesets, caps, redaction) lives in `mly_contract`. [`images`]
//! downloads the pictures of harvested images.

pub mod api;
pub mod cover;
pub mod images;
pub mod io;
pub mod jobs;
pub mod model;
pub mod mvt;
pub mod pipeline;
pub mod region;
pub mod settings;
pub mod store;
