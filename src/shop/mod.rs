//! The shop's domain: the catalogue, the cart kept in the session, orders.

pub mod cart;
pub mod catalogue;
pub mod demo;
pub mod orders;

/// A price in minor units as shoppers read it: `€12.90`.
pub fn format_price(cents: i64, currency: &str) -> String {
    let sign = if cents < 0 { "-" } else { "" };
    let cents = cents.unsigned_abs();
    let amount = format!("{}.{:02}", cents / 100, cents % 100);
    match currency {
        "EUR" => format!("{sign}€{amount}"),
        "USD" => format!("{sign}${amount}"),
        "GBP" => format!("{sign}£{amount}"),
        other => format!("{sign}{amount} {other}"),
    }
}

#[cfg(test)]
mod tests {
    use super::format_price;

    #[test]
    fn prices_read_as_money() {
        assert_eq!(format_price(1290, "EUR"), "€12.90");
        assert_eq!(format_price(5, "USD"), "$0.05");
        assert_eq!(format_price(100_000, "CHF"), "1000.00 CHF");
        assert_eq!(format_price(-250, "GBP"), "-£2.50");
    }
}
