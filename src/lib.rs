//! mly-harvest keeps a PostGIS database in step with Mapillary's street-level imagery.
//!
//! Data flows one way: a [`region`] is planned into [`tiles`]; the [`pipeline`] fetches them
//! through the [`api`] client, decodes them with [`mvt`], enriches the records through the Graph
//! API, and writes them with [`store`], while [`jobs`] tracks runs and tile states so that every
//! run can resume. [`simulator`] serves a faithful offline copy of the Mapillary API v4.

pub mod api;
pub mod budget;
pub mod cli;
pub mod config;
pub mod jobs;
pub mod model;
pub mod mvt;
pub mod ops;
pub mod pipeline;
pub mod region;
pub mod simulator;
pub mod store;
pub mod tiles;
