//! commerce-core (being written).
