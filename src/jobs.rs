//! Harvest runs and tile job states: planning, claiming with leases, quota.
