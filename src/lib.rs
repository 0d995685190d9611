//! TruthTable capture filter.
