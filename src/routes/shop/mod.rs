//! The shop's pages: catalogue, cart, checkout and orders.

pub mod cart;
pub mod catalogue;
pub mod orders;
