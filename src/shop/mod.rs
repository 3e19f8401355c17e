//! The shop's domain: the catalogue, the cart kept in the session, orders, and the money
//! they are priced in.

pub mod cart;
pub mod catalogue;
pub mod demo;
pub mod money;
pub mod orders;

pub use money::{Currency, Money};
