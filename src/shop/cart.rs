//! The cart, kept in the session: for anonymous shoppers too, across the login (the session
//! key is renewed, its content kept) and across restarts (sessions live in Postgres). It holds
//! product ids and quantities only; names and prices are read from the catalogue when shown.

use serde::{Deserialize, Serialize};

use super::catalogue::Product;
use super::{Currency, Money};

/// The session key the cart is stored under.
pub const CART_KEY: &str = "cart";
/// Most of one product a cart may hold.
pub const MAX_QUANTITY: u32 = 99;
/// Most distinct products a cart may hold.
pub const MAX_LINES: usize = 50;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CartLine {
    pub product_id: i64,
    pub quantity: u32,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Cart {
    lines: Vec<CartLine>,
}

/// Why a cart change was refused; the message is for the shopper.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum CartError {
    #[error("Choose a quantity between 1 and {MAX_QUANTITY}.")]
    Quantity,
    #[error("You can have at most {MAX_QUANTITY} of one product in your cart.")]
    TooMany,
    #[error("Your cart can hold at most {MAX_LINES} different products.")]
    TooManyLines,
    #[error("Sorry, only {0} of this product are in stock.")]
    NotEnoughStock(i32),
    #[error("Sorry, this product is sold out.")]
    SoldOut,
}

impl Cart {
    pub fn lines(&self) -> &[CartLine] {
        &self.lines
    }

    pub fn is_empty(&self) -> bool {
        self.lines.is_empty()
    }

    /// Items in the cart, counting quantities.
    pub fn count(&self) -> u32 {
        self.lines.iter().map(|l| l.quantity).sum()
    }

    fn quantity_of(&self, product_id: i64) -> u32 {
        self.lines
            .iter()
            .find(|l| l.product_id == product_id)
            .map_or(0, |l| l.quantity)
    }

    /// Adds `quantity` of `product` (checked against the bounds and the current stock).
    pub fn add(&mut self, product: &Product, quantity: u32) -> Result<(), CartError> {
        if !(1..=MAX_QUANTITY).contains(&quantity) {
            return Err(CartError::Quantity);
        }
        let total = self.quantity_of(product.product_id) + quantity;
        if total > MAX_QUANTITY {
            return Err(CartError::TooMany);
        }
        self.set(product, total)
    }

    /// Sets the quantity of `product`; 0 removes it.
    pub fn set(&mut self, product: &Product, quantity: u32) -> Result<(), CartError> {
        if quantity == 0 {
            self.remove(product.product_id);
            return Ok(());
        }
        if quantity > MAX_QUANTITY {
            return Err(CartError::Quantity);
        }
        if product.stock <= 0 {
            return Err(CartError::SoldOut);
        }
        if i64::from(quantity) > i64::from(product.stock) {
            return Err(CartError::NotEnoughStock(product.stock));
        }
        let full = self.lines.len() >= MAX_LINES;
        match self
            .lines
            .iter_mut()
            .find(|l| l.product_id == product.product_id)
        {
            Some(line) => line.quantity = quantity,
            None if full => return Err(CartError::TooManyLines),
            None => self.lines.push(CartLine {
                product_id: product.product_id,
                quantity,
            }),
        }
        Ok(())
    }

    pub fn remove(&mut self, product_id: i64) {
        self.lines.retain(|l| l.product_id != product_id);
    }

    /// Drops lines whose product is no longer on sale; returns the changes made.
    pub fn retain_available(&mut self, products: &[Product]) -> Vec<CartChange> {
        let gone: Vec<CartChange> = self
            .lines
            .iter()
            .filter(|l| !products.iter().any(|p| p.product_id == l.product_id))
            .map(|l| CartChange::Remove {
                product_id: l.product_id,
            })
            .collect();
        for change in &gone {
            self.replay(change);
        }
        gone
    }
}

/// One change a request made to the cart, kept so that it can be made again on a cart that
/// another request of the same session changed meanwhile (the session store's merge): two
/// tabs adding at once both keep their lines, and an add racing a checkout does not put the
/// ordered lines back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum CartChange {
    Add {
        product_id: i64,
        quantity: u32,
    },
    Set {
        product_id: i64,
        quantity: u32,
    },
    Remove {
        product_id: i64,
    },
    /// These lines were ordered: their quantities leave the cart.
    Ordered {
        lines: Vec<CartLine>,
    },
}

impl Cart {
    /// Makes `change` again on this cart. The bounds still hold (at most [`MAX_QUANTITY`] of a
    /// product, [`MAX_LINES`] lines); stock was checked when the change was first made and is
    /// checked again at checkout.
    pub fn replay(&mut self, change: &CartChange) {
        let set = |cart: &mut Cart, product_id: i64, quantity: u32| {
            let quantity = quantity.min(MAX_QUANTITY);
            if quantity == 0 {
                cart.remove(product_id);
                return;
            }
            let full = cart.lines.len() >= MAX_LINES;
            match cart.lines.iter_mut().find(|l| l.product_id == product_id) {
                Some(line) => line.quantity = quantity,
                None if full => {}
                None => cart.lines.push(CartLine {
                    product_id,
                    quantity,
                }),
            }
        };
        match change {
            CartChange::Add {
                product_id,
                quantity,
            } => {
                let total = self.quantity_of(*product_id).saturating_add(*quantity);
                set(self, *product_id, total);
            }
            CartChange::Set {
                product_id,
                quantity,
            } => set(self, *product_id, *quantity),
            CartChange::Remove { product_id } => self.remove(*product_id),
            CartChange::Ordered { lines } => {
                for ordered in lines {
                    let left = self
                        .quantity_of(ordered.product_id)
                        .saturating_sub(ordered.quantity);
                    set(self, ordered.product_id, left);
                }
            }
        }
    }
}

/// A cart line as shown: the product as the catalogue has it now, and the line total.
#[derive(Debug, Serialize)]
pub struct PricedLine {
    pub product: Product,
    pub quantity: u32,
    pub price: Money,
    pub line_total: Money,
    pub in_stock: bool,
}

#[derive(Debug, Serialize)]
pub struct PricedCart {
    pub lines: Vec<PricedLine>,
    pub count: u32,
    pub total: Money,
}

/// Prices the cart with the catalogue's current prices, in the cart's order.
pub fn price(cart: &Cart, products: &[Product]) -> PricedCart {
    let lines: Vec<PricedLine> = cart
        .lines()
        .iter()
        .filter_map(|line| {
            let product = products.iter().find(|p| p.product_id == line.product_id)?;
            Some(PricedLine {
                price: product.price,
                line_total: product.price.times(line.quantity),
                in_stock: i64::from(product.stock) >= i64::from(line.quantity),
                quantity: line.quantity,
                product: product.clone(),
            })
        })
        .collect();
    let currency = lines.last().map_or(Currency::EUR, |l| l.price.currency);
    let total = lines
        .iter()
        .fold(Money::zero(currency), |total, l| total + l.line_total);
    PricedCart {
        lines,
        count: cart.count(),
        total,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn product(id: i64, stock: i32) -> Product {
        Product {
            product_id: id,
            slug: format!("p{id}"),
            name: format!("Product {id}"),
            description: String::new(),
            price: Money::new(250, Currency::EUR),
            image_path: None,
            image_alt: String::new(),
            stock,
        }
    }

    #[test]
    fn quantities_are_bounded() {
        let mut cart = Cart::default();
        let p = product(1, 1000);
        assert_eq!(cart.add(&p, 0), Err(CartError::Quantity));
        assert_eq!(cart.add(&p, 100), Err(CartError::Quantity));
        cart.add(&p, 60).unwrap();
        assert_eq!(cart.add(&p, 40), Err(CartError::TooMany));
        assert_eq!(cart.count(), 60, "a refused change changes nothing");
        cart.set(&p, 99).unwrap();
        assert_eq!(cart.set(&p, 100), Err(CartError::Quantity));
        cart.set(&p, 0).unwrap();
        assert!(cart.is_empty());
    }

    #[test]
    fn stock_limits_what_can_be_added() {
        let mut cart = Cart::default();
        assert_eq!(cart.add(&product(1, 0), 1), Err(CartError::SoldOut));
        let p = product(2, 3);
        cart.add(&p, 2).unwrap();
        assert_eq!(cart.add(&p, 2), Err(CartError::NotEnoughStock(3)));
        assert_eq!(cart.count(), 2);
    }

    #[test]
    fn the_number_of_lines_is_bounded() {
        let mut cart = Cart::default();
        for id in 0..MAX_LINES as i64 {
            cart.add(&product(id, 5), 1).unwrap();
        }
        assert_eq!(cart.add(&product(999, 5), 1), Err(CartError::TooManyLines));
        // An existing line can still change.
        cart.add(&product(0, 5), 1).unwrap();
    }

    #[test]
    fn replayed_changes_apply_to_whatever_the_cart_holds_now() {
        let mut cart = Cart::default();
        cart.replay(&CartChange::Add {
            product_id: 1,
            quantity: 2,
        });
        cart.replay(&CartChange::Add {
            product_id: 1,
            quantity: 98,
        });
        assert_eq!(cart.count(), MAX_QUANTITY, "capped, not refused");
        cart.replay(&CartChange::Add {
            product_id: 2,
            quantity: 1,
        });
        cart.replay(&CartChange::Ordered {
            lines: vec![CartLine {
                product_id: 1,
                quantity: 99,
            }],
        });
        assert_eq!(
            cart.lines(),
            &[CartLine {
                product_id: 2,
                quantity: 1
            }],
            "ordered lines leave, others stay"
        );
        cart.replay(&CartChange::Set {
            product_id: 2,
            quantity: 0,
        });
        assert!(cart.is_empty());
    }

    #[test]
    fn totals_use_catalogue_prices() {
        let mut cart = Cart::default();
        let (a, mut b) = (product(1, 10), product(2, 10));
        b.price = Money::new(1999, Currency::EUR);
        cart.add(&a, 2).unwrap();
        cart.add(&b, 1).unwrap();
        let priced = price(&cart, &[b.clone(), a.clone()]);
        assert_eq!(priced.total.to_string(), "€24.99");
        assert_eq!(priced.lines[0].product.product_id, 1, "cart order kept");
        assert_eq!(priced.count, 3);
        // A product that left the catalogue drops out.
        assert_eq!(
            cart.retain_available(&[a]),
            vec![CartChange::Remove { product_id: 2 }]
        );
        assert_eq!(cart.lines().len(), 1);
    }
}
