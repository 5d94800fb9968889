//! The report's views, one module each, in the order the report shows them. Each builds a
//! [`Section`](super::Section) from the frames (and the factors that vary in the sweep).

pub mod accuracy;
pub mod budget;
pub mod claims;
pub mod cost;
pub mod filters;
pub mod gain;
pub mod layouts;
pub mod overfitting;
pub mod paper;
pub mod robustness;
