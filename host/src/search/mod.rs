//! Automated metric search: proposers (symbolic GP, random sampling), the evaluation cascade,
//! the SQLite archive and the loop that ties them together (`autoprune search`,
//! `autoprune runs show`).

pub mod archive;
pub mod cascade;
pub mod gp;
pub mod proposer;
pub mod run;
