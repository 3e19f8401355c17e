//! Money: an amount in minor units with its currency. Prices, line totals and order totals
//! are kept as `Money` and formatted only where people read them (`Display`, and `Serialize`
//! for templates, which writes the same text).

use std::fmt;

use serde::{Serialize, Serializer};

/// An ISO 4217 code (`EUR`); the database's CHECK keeps it to three capital letters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Currency([u8; 3]);

impl Currency {
    pub const EUR: Currency = Currency(*b"EUR");

    /// `None` unless `code` is three ASCII capital letters.
    pub fn parse(code: &str) -> Option<Currency> {
        let bytes: [u8; 3] = code.as_bytes().try_into().ok()?;
        bytes
            .iter()
            .all(u8::is_ascii_uppercase)
            .then_some(Currency(bytes))
    }

    pub fn code(&self) -> &str {
        std::str::from_utf8(&self.0).expect("ASCII by construction")
    }

    fn symbol(&self) -> Option<&'static str> {
        match &self.0 {
            b"EUR" => Some("€"),
            b"USD" => Some("$"),
            b"GBP" => Some("£"),
            _ => None,
        }
    }
}

impl fmt::Display for Currency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.code())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Money {
    pub cents: i64,
    pub currency: Currency,
}

impl Money {
    pub fn new(cents: i64, currency: Currency) -> Self {
        Self { cents, currency }
    }

    /// From the database's `(cents, currency)` columns; an unknown code (which the CHECK
    /// constraint rules out) is shown as euros rather than failing a page.
    pub fn from_columns(cents: impl Into<i64>, currency: &str) -> Self {
        Self::new(
            cents.into(),
            Currency::parse(currency).unwrap_or(Currency::EUR),
        )
    }

    /// This amount `quantity` times.
    pub fn times(self, quantity: u32) -> Self {
        Self::new(self.cents * i64::from(quantity), self.currency)
    }

    pub fn zero(currency: Currency) -> Self {
        Self::new(0, currency)
    }
}

impl std::ops::Add for Money {
    type Output = Money;

    /// Amounts add within one currency; the shop prices every cart in one.
    fn add(self, other: Money) -> Money {
        debug_assert_eq!(self.currency, other.currency, "adding different currencies");
        Money::new(self.cents + other.cents, other.currency)
    }
}

/// As shoppers read it: `€12.90`, `-£2.50`, `1000.00 CHF`.
impl fmt::Display for Money {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.cents < 0 { "-" } else { "" };
        let cents = self.cents.unsigned_abs();
        let (units, rest) = (cents / 100, cents % 100);
        match self.currency.symbol() {
            Some(symbol) => write!(f, "{sign}{symbol}{units}.{rest:02}"),
            None => write!(f, "{sign}{units}.{rest:02} {}", self.currency),
        }
    }
}

impl Serialize for Money {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amounts_read_as_money() {
        let eur = Currency::EUR;
        assert_eq!(Money::new(1290, eur).to_string(), "€12.90");
        assert_eq!(Money::from_columns(5, "USD").to_string(), "$0.05");
        assert_eq!(
            Money::from_columns(100_000, "CHF").to_string(),
            "1000.00 CHF"
        );
        assert_eq!(Money::from_columns(-250, "GBP").to_string(), "-£2.50");
        assert_eq!(
            Money::new(250, eur).times(3) + Money::new(1, eur),
            Money::new(751, eur)
        );
        assert_eq!(serde_json::to_value(Money::new(990, eur)).unwrap(), "€9.90");
    }

    #[test]
    fn only_three_capital_letters_are_a_currency() {
        assert_eq!(Currency::parse("EUR"), Some(Currency::EUR));
        for bad in ["eur", "EU", "EURO", "", "E1R"] {
            assert_eq!(Currency::parse(bad), None, "{bad}");
        }
    }
}
