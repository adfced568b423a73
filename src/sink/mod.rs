//! Writing MAS: shadow tables loaded with binary COPY, rebuilt in parallel, swapped in atomically.
//!
//! Nothing MAS can see changes until the single swap transaction at the very end, so a failure,
//! a kill or a dropped connection at any earlier point leaves MAS exactly as it was; the next
//! run drops the leftover shadow tables before doing anything else.

pub mod catalog;
pub mod rebuild;
pub mod shadow;
pub mod tables;
pub mod writer;
