//! Merge rules for several configuration files.
